"""Cross-pair preference optimisation (CPPO): pairing by quality dimension and a flow-matching DPO loss.

Shape legend: B pairs, T latent frames (padded to whole blocks), M latent channels, N lyric tokens.

Pairing (the paper's scheme): samples carry binary labels on four dimensions. Dimensions are
grouped in pairs -- musicality with lyric accuracy, style similarity with audio quality -- and each
group trains its own model. In a group, the chosen sample is good on both dimensions; the rejected
sample (same prompt) is bad on at least one, and the three ways of losing (first only, second
only, both) appear in equal proportion. The group models are merged by weight averaging.

Loss (Diffusion-DPO written for flow matching): with the same noise ``z0`` and the same per-block
times ``t`` for the chosen (w) and rejected (l) latents, let ``e(θ, x)`` be the block flow matching
error of model θ. Then ``L = −log σ(−β · [(e(θ,w) − e(ref,w)) − (e(θ,l) − e(ref,l))])``: the
policy is pushed to fit the chosen sample better than the frozen reference does, relative to the
rejected one.
"""
from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dr2studio.flow.block_fm import BlockFlowMatching, pad_end_of_prediction

__all__ = [
    "DIMENSIONS",
    "labelled_for",
    "pairs_per_case",
    "PAIR_GROUPS",
    "LOSING_CASES",
    "PreferenceError",
    "Candidate",
    "PreferencePair",
    "is_good",
    "build_pairs",
    "FlowErrors",
    "shared_noise",
    "fm_dpo_loss",
    "average_state_dicts",
]

DIMENSIONS = ("musicality", "lyric_accuracy", "style_similarity", "audio_quality")
PAIR_GROUPS: dict[str, tuple[str, str]] = {
    "musicality_lyrics": ("musicality", "lyric_accuracy"),
    "style_quality": ("style_similarity", "audio_quality"),
}
LOSING_CASES = ("first", "second", "both")  # which of the group's two dimensions the rejected loses


class PreferenceError(ValueError):
    """Preference data that cannot form the requested pairs."""


@dataclasses.dataclass
class Candidate:
    """One generated sample for a prompt, with its dimension labels (bool, 0/1 or a score in [0, 1])."""

    id: str
    prompt: str
    labels: dict[str, float]
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PreferencePair:
    group: str
    prompt: str
    chosen: Candidate
    rejected: Candidate
    case: str  # one of LOSING_CASES


def is_good(candidate: Candidate, dim: str, threshold: float = 0.5) -> bool:
    """Whether ``candidate`` wins dimension ``dim`` (label >= threshold)."""
    if dim not in candidate.labels:
        raise PreferenceError(f"candidate {candidate.id!r} has no label for {dim!r} (labels: {sorted(candidate.labels)})")
    return float(candidate.labels[dim]) >= threshold


def labelled_for(candidates: Sequence[Candidate], group: str) -> list[Candidate]:
    """The candidates that carry both labels of ``group``: a take rated or scored on only some dimensions
    (no lyric-accuracy scorer, say) still pairs in the groups it has labels for."""
    if group not in PAIR_GROUPS:
        raise PreferenceError(f"unknown pair group {group!r}; choose from {sorted(PAIR_GROUPS)}")
    return [c for c in candidates if all(d in c.labels for d in PAIR_GROUPS[group])]


def _case(c: Candidate, dims: tuple[str, str], threshold: float) -> str | None:
    a, b = (is_good(c, d, threshold) for d in dims)
    if a and b:
        return None  # a winner
    return "both" if not (a or b) else ("first" if not a else "second")


def _pools(candidates: Sequence[Candidate], group: str) -> tuple[tuple[str, str], dict[str, list[Candidate]]]:
    """The group's two dimensions and its candidates by prompt (pairs form only within a prompt)."""
    if group not in PAIR_GROUPS:
        raise PreferenceError(f"unknown pair group {group!r}; choose from {sorted(PAIR_GROUPS)}")
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt].append(c)
    return PAIR_GROUPS[group], by_prompt


def pairs_per_case(candidates: Sequence[Candidate], group: str, threshold: float = 0.5) -> dict[str, int]:
    """(chosen, rejected) pairs per losing case within prompts, before balancing: what a report shows so a
    producer sees why a group yields few or no balanced pairs. Every candidate needs the group's labels."""
    dims, by_prompt = _pools(candidates, group)
    out = dict.fromkeys(LOSING_CASES, 0)
    for pool in by_prompt.values():
        cases = [_case(c, dims, threshold) for c in pool]
        winners = cases.count(None)
        for case in cases:
            if case is not None:
                out[case] += winners
    return out


def build_pairs(
    candidates: Sequence[Candidate],
    group: str,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    max_pairs: int | None = None,
    balance: bool = True,
) -> list[PreferencePair]:
    """All (chosen, rejected) pairs of one group, within prompts, balanced over the losing cases.

    Each losing case is down-sampled (seeded) to the size of the smallest case, so the three cases
    appear in equal proportion. Raises :class:`PreferenceError` when a case has no pair at all
    (balancing would leave nothing) -- the error names the group and the missing case. With
    ``balance=False`` every pair is kept (``max_pairs`` caps the total) and only a group with no pair
    at all is refused: for labels where one dimension of the group never loses (automatic scores).
    """
    dims, by_prompt = _pools(candidates, group)
    per_case: dict[str, list[PreferencePair]] = {k: [] for k in LOSING_CASES}
    for prompt in sorted(by_prompt):
        pool = by_prompt[prompt]
        winners = [c for c in pool if _case(c, dims, threshold) is None]
        for loser in pool:
            case = _case(loser, dims, threshold)
            if case is None:
                continue
            per_case[case].extend(PreferencePair(group, prompt, w, loser, case) for w in winners)
    empty = [k for k, v in per_case.items() if not v]
    if not balance:
        everything = [pair for case in LOSING_CASES for pair in per_case[case]]
        if not everything:
            raise PreferenceError(f"group {group!r} ({dims[0]} + {dims[1]}): no prompt has both a sample good on "
                                  f"both dimensions and one that loses either")
        random.Random(seed).shuffle(everything)
        return everything[:max_pairs] if max_pairs is not None else everything
    if empty:
        counts = {k: len(v) for k, v in per_case.items()}
        raise PreferenceError(
            f"group {group!r} ({dims[0]} + {dims[1]}): no pairs where the rejected sample loses {empty} "
            f"(pairs per losing case: {counts}); the three cases must all occur to balance them"
        )
    n = min(len(v) for v in per_case.values())
    if max_pairs is not None:
        n = min(n, max(1, max_pairs // len(LOSING_CASES)))
    rng = random.Random(seed)
    pairs: list[PreferencePair] = []
    for case in LOSING_CASES:
        pool = per_case[case][:]
        rng.shuffle(pool)
        pairs.extend(pool[:n])
    rng.shuffle(pairs)
    return pairs


def shared_noise(
    lengths: Tensor, block_size: int, channels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Noise ``[B, T', M]`` and per-block times ``[B, T'/b]`` covering the longest padded song in
    ``lengths [B]`` (end-of-prediction padding included), to be shared by chosen and rejected."""
    total = int(((lengths.max() // block_size) + 1) * block_size)
    bsz = lengths.shape[0]
    z0 = torch.randn(bsz, total, channels, generator=generator)
    t = torch.rand(bsz, total // block_size, generator=generator)
    return z0, t


class FlowErrors(nn.Module):
    """Per-sample block flow matching error ``[B]`` for given noise and times (no condition dropout).

    A module (not a function) so that data-parallel wrappers see the forward pass.
    """

    def __init__(self, objective: BlockFlowMatching) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, latents: Tensor, lengths: Tensor, tokens: Tensor, token_lengths: Tensor, style: Tensor,
                noise: Tensor, t_blocks: Tensor, beats_per_frame: Tensor | None = None) -> Tensor:
        """``beats_per_frame [B]`` (NaN: no tempo) feeds a tempo-clock DiT as in training and sampling."""
        obj = self.objective
        b = obj.model.config.block_size
        z, padded = pad_end_of_prediction(latents.float(), lengths, b, obj.config.end_padding)
        total = z.shape[1]
        if noise.shape[1] < total or t_blocks.shape[1] * b < total:
            raise ValueError(f"noise covers {noise.shape[1]} frames, the padded batch needs {total}")
        z0 = noise[:, :total].to(z.device)
        t_frames = t_blocks.to(z.device).repeat_interleave(b, dim=1)[:, :total]
        noisy = (1.0 - t_frames[..., None]) * z0 + t_frames[..., None] * z
        device = z.device
        frame_valid = torch.arange(total, device=device)[None] < padded[:, None]
        token_valid = torch.arange(tokens.shape[1], device=device)[None] < token_lengths.to(device)[:, None]
        v, _ = obj.velocity(z, noisy, t_frames, tokens, style, token_valid, frame_valid,
                            beats_per_frame=beats_per_frame)
        err = (v.float() - (z - z0)).pow(2).mean(-1) * frame_valid
        return err.sum(1) / frame_valid.sum(1).clamp(min=1)


def fm_dpo_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> tuple[Tensor, dict[str, float]]:
    """Flow-matching DPO loss from per-sample errors ``[B]``; returns (loss, metrics).

    ``reward_accuracy`` is the share of pairs where the policy already prefers the chosen sample
    more than the reference does.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = (policy_w - ref_w) - (policy_l - ref_l)
    loss = -F.logsigmoid(-beta * margin).mean()
    return loss, {
        "dpo_margin": float(margin.detach().mean()),
        "reward_accuracy": float((margin.detach() < 0).float().mean()),
        "chosen_err": float(policy_w.detach().mean()),
        "rejected_err": float(policy_l.detach().mean()),
    }


def average_state_dicts(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """Weight-average models with identical keys and shapes (the CPPO merge). Weights are
    normalised to sum to 1; non-float entries must be equal and are taken from the first model."""
    if not states:
        raise ValueError("average_state_dicts needs at least one state dict")
    w = torch.tensor(weights if weights is not None else [1.0] * len(states), dtype=torch.float64)
    if w.shape[0] != len(states) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"merge weights must be non-negative, one per model, not all zero: {weights}")
    w = w / w.sum()
    keys = list(states[0])
    out: dict[str, Tensor] = {}
    for i, sd in enumerate(states[1:], 1):
        if set(sd) != set(keys):
            diff = sorted(set(sd) ^ set(keys))[:5]
            raise ValueError(f"model {i} has different keys from model 0 (for example {diff})")
    for k in keys:
        ts = [sd[k] for sd in states]
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(f"{k}: shapes differ across models: {[tuple(t.shape) for t in ts]}")
        if ts[0].is_floating_point():
            acc = sum(float(wi) * t.double() for wi, t in zip(w, ts))
            out[k] = acc.to(ts[0].dtype)
        else:
            if any(not torch.equal(t, ts[0]) for t in ts):
                raise ValueError(f"{k}: non-float entries differ across models and cannot be averaged")
            out[k] = ts[0].clone()
    return out
