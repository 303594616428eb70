"""Stage 3: cross-pair preference optimisation (CPPO) on Ray Train, then a weight-average merge.

    python -m training.cppo --config cppo.json        # preferences JSONL + a model directory to start from
    python -m training.cppo --smoke                   # tiny model, synthetic preferences, 2 CPU workers

Preference data (JSONL, paths relative to the file). Either one line per pair::

    {"prompt": "p1", "lyrics": "[verse]\\n...", "style": "pop, 120 bpm",
     "chosen":   {"latents": "a.safetensors", "labels": {"musicality": 1, "lyric_accuracy": 1, ...}},
     "rejected": {"audio": "b.wav",          "labels": {"musicality": 0, "lyric_accuracy": 1, ...}}}

or one line per sample (``{"prompt", "lyrics", "style", "latents"|"audio", "labels"}``). ``tokens``
(a list of ids) and ``style_embedding`` (a vector file) may replace ``lyrics`` / ``style``. Labels are
bool, 0/1 or scores in [0, 1] for ``musicality``, ``lyric_accuracy``, ``style_similarity`` and
``audio_quality``.

For each pair group (musicality + lyric accuracy; style similarity + audio quality) the samples are
re-paired by :func:`dr2studio.flow.preference.build_pairs` (chosen good on both, rejected bad on at
least one, the three losing cases balanced) and one run ``<name>-<group>`` trains a policy against
the frozen starting model with the flow-matching DPO loss (same noise and times for chosen and
rejected). The group models are then merged by weight averaging (``merge_weights``, equal by
default) into one model directory.

``balance_cases: false`` keeps every pair instead of balancing the losing cases: automatic scores
(``training/mine_candidates.py``) may never fail one dimension of a group (the demo model's takes all pass
audio quality), which leaves only one case. A DiT with a tempo clock gets the tempo each sample's style
text states, as in ``training/block_fm.py``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from dr2studio.config import ConfigError
from dr2studio.data.collate import LatentBatch, collate_examples
from dr2studio.data.shards import Example, Shard, write_shard
from dr2studio.data.stream import DataPosition, epoch_order
from dr2studio.flow.block_fm import BlockFlowMatching, BlockFMConfig
from dr2studio.flow.preference import (
    PAIR_GROUPS,
    Candidate,
    FlowErrors,
    PreferenceError,
    average_state_dicts,
    build_pairs,
    fm_dpo_loss,
    labelled_for,
    shared_noise,
)
from dr2studio.models.dit import DecoderLayer, DiTConfig
from training import common
from training.common import TrainConfig
from training.export import export_dit
from training.prepare_data import load_plugin
from training.solver import Solver

__all__ = ["CPPOTrainConfig", "smoke_config", "load_candidates", "write_pairs", "PairStream", "train_loop", "main"]

log = logging.getLogger("dr2studio.training.cppo")


@dataclasses.dataclass
class CPPOTrainConfig(TrainConfig):
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("export_dir", "preferences", "init_from", "pairs_file")
    preferences: str = ""  # preference JSONL
    init_from: str = ""  # model directory: the starting policy and the frozen reference
    groups: list[str] = dataclasses.field(default_factory=lambda: sorted(PAIR_GROUPS))
    beta: float = 500.0
    label_threshold: float = 0.5
    max_pairs: int = 0  # per group, 0 = all balanced pairs
    balance_cases: bool = True  # False: keep every pair (automatic scores where one dimension never loses)
    merge_weights: list[float] = dataclasses.field(default_factory=list)  # one per group, [] = equal
    max_frames: int = 1050
    tokenizer: str = "training.prepare_data:VocabTokenizer"
    tokenizer_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # default: {"vocab": init_from}
    style: str = "training.prepare_data:StyleEmbedder"
    style_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # default: {"model_dir": init_from}
    encoder: str = "training.prepare_data:VaeEncoder"
    encoder_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # default: {"model_dir": init_from}
    pairs_file: str = ""  # set per group by the driver

    def validate(self) -> None:
        super().validate()
        unknown = [g for g in self.groups if g not in PAIR_GROUPS]
        if unknown or not self.groups:
            raise ConfigError(f"groups must be a non-empty subset of {sorted(PAIR_GROUPS)}, got {self.groups}")
        if self.merge_weights and len(self.merge_weights) != len(self.groups):
            raise ConfigError(f"merge_weights needs one weight per group ({len(self.groups)}), got {self.merge_weights}")
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")


def smoke_config() -> CPPOTrainConfig:
    return CPPOTrainConfig(
        name="cppo-smoke", num_workers=2, max_steps=8, batch_size=2, lr=5e-4, warmup_steps=2,
        checkpoint_every=4, report_every=4, beta=50.0, max_frames=40,
    )


# --------------------------------------------------------------------------- data


def _read_latents(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        lat = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        d = load_file(str(path))
        lat = d["latents"] if "latents" in d else next(iter(d.values()))
    else:
        lat = torch.load(path, map_location="cpu", weights_only=True)
    lat = lat.float()
    if lat.ndim == 3 and lat.shape[0] == 1:
        lat = lat[0]
    if lat.ndim != 2:
        raise PreferenceError(f"{path}: latents must be [T, C] or [1, T, C], got {tuple(lat.shape)}")
    return lat


class _Featurizer:
    """Tokens, style vectors and latents for preference samples; plugins load on first use."""

    def __init__(self, cfg: CPPOTrainConfig) -> None:
        self.cfg = cfg
        self._tok = self._style = self._enc = None

    def tokens(self, rec: dict[str, Any]) -> torch.Tensor:
        if rec.get("tokens") is not None:
            return torch.tensor(rec["tokens"], dtype=torch.long)
        if self._tok is None:
            self._tok = load_plugin(self.cfg.tokenizer, self.cfg.tokenizer_kwargs or {"vocab": self.cfg.init_from})
        return torch.tensor(self._tok(str(rec.get("lyrics", ""))), dtype=torch.long)

    def style(self, rec: dict[str, Any]) -> torch.Tensor:
        if self._style is None:
            self._style = load_plugin(self.cfg.style, self.cfg.style_kwargs or {"model_dir": self.cfg.init_from})
        return torch.as_tensor(self._style(rec), dtype=torch.float32)

    def latents(self, sample: dict[str, Any]) -> torch.Tensor:
        if sample.get("latents"):
            return _read_latents(Path(sample["latents"]))
        if not sample.get("audio"):
            raise PreferenceError("a sample needs 'latents' or 'audio'")
        if self._enc is None:
            self._enc = load_plugin(self.cfg.encoder, self.cfg.encoder_kwargs or {"model_dir": self.cfg.init_from})
        from dr2studio.data.manifest import load_audio

        audio = load_audio(sample["audio"], self._enc.sample_rate, self.cfg.max_frames / self._enc.frame_rate)
        return torch.from_numpy(self._enc(audio[None], np.array([audio.shape[0]]))[0])


def _stated_tempo(rec: dict[str, Any]) -> float | None:
    """The bpm a sample's style text states (for a tempo-clock DiT), or an explicit ``tempo``."""
    if rec.get("tempo") is not None:
        return float(rec["tempo"])
    if isinstance(rec.get("style"), str):
        from dr2studio.style.tags import parse_style_tags

        return parse_style_tags(rec["style"]).tempo
    return None


def load_candidates(path: str | Path, cfg: CPPOTrainConfig) -> list[Candidate]:
    """Read preference JSONL (pair lines or sample lines) into featurised :class:`Candidate` s.

    ``payload`` holds an :class:`Example` (latents, tokens, style). A sample that appears in several
    pair lines (same latents/audio path and prompt) becomes one candidate.
    """
    path = Path(path)
    if not path.is_file():
        raise PreferenceError(f"preference file not found: {path}")
    feat = _Featurizer(cfg)
    seen: dict[tuple[str, str], Candidate] = {}
    base = path.parent
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PreferenceError(f"{path}:{n}: malformed JSON ({exc.msg})") from exc
        for key in ("style_embedding", "style_audio"):
            if rec.get(key):
                rec[key] = str(base / rec[key])
        samples = [rec[k] for k in ("chosen", "rejected") if k in rec] or [rec]
        prompt = str(rec.get("prompt") or rec.get("lyrics", ""))
        try:
            tokens, style = feat.tokens(rec), feat.style(rec)
            for s in samples:
                s = dict(s)
                for key in ("latents", "audio"):
                    if s.get(key):
                        s[key] = str(base / s[key])
                ident = (prompt, s.get("latents") or s.get("audio") or "")
                if ident in seen:
                    continue
                labels = {k: float(v) for k, v in (s.get("labels") or {}).items()}
                ex = Example(id=f"{len(seen):06d}", latents=feat.latents(s)[: cfg.max_frames], tokens=tokens, style=style,
                             tempo=_stated_tempo(rec))
                seen[ident] = Candidate(ex.id, prompt, labels, {"example": ex})
        except (PreferenceError, ValueError, OSError) as exc:
            raise PreferenceError(f"{path}:{n}: {exc}") from exc
    if not seen:
        raise PreferenceError(f"{path}: no preference samples")
    return list(seen.values())


def write_pairs(candidates: Sequence[Candidate], group: str, out: Path, cfg: CPPOTrainConfig) -> tuple[Path, dict[str, int]]:
    """Pair ``candidates`` for ``group`` and store them as one shard: chosen_k at 2k, rejected_k at 2k+1."""
    usable = labelled_for(candidates, group)
    if not usable:
        raise PreferenceError(f"group {group!r}: no candidate has both of its labels {list(PAIR_GROUPS[group])}")
    pairs = build_pairs(usable, group, seed=cfg.seed, threshold=cfg.label_threshold, max_pairs=cfg.max_pairs or None,
                        balance=cfg.balance_cases)
    examples = []
    for p in pairs:
        examples += [p.chosen.payload["example"], p.rejected.payload["example"]]
    path = out / f"pairs-{group}.safetensors"
    write_shard(path, examples)
    counts = {c: sum(1 for p in pairs if p.case == c) for c in ("first", "second", "both")}
    return path, counts


class PairStream:
    """Resumable batches of (chosen, rejected) pairs for one rank, collated together as ``[2B, ...]``
    (first B rows chosen, last B rejected)."""

    def __init__(self, path: str | Path, batch_size: int, *, rank: int, world_size: int, seed: int, max_frames: int) -> None:
        self.shard = Shard(path)
        self.num_pairs = len(self.shard) // 2
        self.batch_size, self.rank, self.world_size, self.seed, self.max_frames = batch_size, rank, world_size, seed, max_frames
        self.batches_per_epoch = (self.num_pairs // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise PreferenceError(f"{path}: {self.num_pairs} pairs are too few for batch_size {batch_size} on {world_size} rank(s)")

    def iter_from(self, position: DataPosition = DataPosition()) -> Iterator[tuple[LatentBatch, DataPosition]]:
        epoch, start = position.epoch, position.batch
        while True:
            order = [i for _, i in epoch_order([self.num_pairs], self.seed, epoch)]
            mine = order[self.rank :: self.world_size][: self.num_pairs // self.world_size]
            for b in range(start, self.batches_per_epoch):
                idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
                examples = [self.shard[2 * i] for i in idx] + [self.shard[2 * i + 1] for i in idx]
                nxt = DataPosition(epoch, b + 1) if b + 1 < self.batches_per_epoch else DataPosition(epoch + 1, 0)
                yield collate_examples(examples, max_frames=self.max_frames), nxt
            epoch, start = epoch + 1, 0


# --------------------------------------------------------------------------- training


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker: DPO of the policy against the frozen starting model."""
    from dr2studio.checkpoints import load_dit

    cfg = CPPOTrainConfig.from_dict(loop_config["config"])
    ctx = common.worker_context()
    common.seed_everything(cfg.seed)
    policy = load_dit(cfg.init_from, device="cpu", dtype=torch.float32).train()
    policy.gradient_checkpointing = bool(cfg.activation_checkpointing and ctx.device.type == "cuda")
    if policy.projectors is not None:
        policy.projectors.requires_grad_(False)  # REPA plays no part in preference training
    ref = FlowErrors(BlockFlowMatching(load_dit(cfg.init_from, device=ctx.device, dtype=torch.float32)))
    ref.eval().requires_grad_(False)
    wrapped = common.prepare(FlowErrors(BlockFlowMatching(policy, BlockFMConfig())), cfg, fsdp_wrap={DecoderLayer})
    opt = common.make_optimizer(wrapped.parameters(), cfg)
    solver = Solver(cfg, ctx, loop_config, unit="frames", modules={"policy": wrapped},
                    optimizers={"adamw": (wrapped, opt)}, schedulers={"warmup": common.make_scheduler(opt, cfg)})
    stream = PairStream(cfg.pairs_file, cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                        max_frames=cfg.max_frames)
    batches = stream.iter_from(solver.position)
    block = policy.config.block_size
    frames_per_minute = None
    if policy.clock_embed is not None:  # the tempo clock runs in beats per latent frame, as in training/block_fm
        from dr2studio.models.bigvgan import DecoderConfig

        dec = DecoderConfig.load(Path(cfg.init_from) / "decoder.json")
        frames_per_minute = 60.0 * dec.sampling_rate / dec.hop_length
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank * 104_729 + solver.step)
    for _ in solver.steps():
        batch, position = next(batches)
        batch = batch.to(ctx.device)
        half = batch.latents.shape[0] // 2
        lengths, tlen = batch.latent_mask.sum(1), batch.token_mask.sum(1)
        noise, t = shared_noise(lengths.cpu(), block, batch.latents.shape[-1], generator=gen)
        noise, t = noise[:half].repeat(2, 1, 1), t[:half].repeat(2, 1)  # chosen and rejected share noise and t
        bpf = None if frames_per_minute is None or batch.tempo is None else batch.tempo / frames_per_minute
        args = (batch.latents, lengths, batch.tokens, tlen, batch.style, noise.to(ctx.device), t.to(ctx.device), bpf)
        with common.autocast(cfg, ctx.device):
            err = wrapped(*args)
            with torch.no_grad():
                ref_err = ref(*args)
        loss, metrics = fm_dpo_loss(err[:half], err[half:], ref_err[:half], ref_err[half:], cfg.beta)
        grad_norm = solver.optimize(loss, wrapped, opt)
        solver.end_step({"loss": loss.item(), "grad_norm": grad_norm, **metrics}, units=batch.frames, position=position)


def _policy_state(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    state = common.load_checkpoint_module(checkpoint_dir, "policy")
    prefix = "objective.model."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _make_smoke_data(cfg: CPPOTrainConfig, root: Path) -> None:
    """A random tiny base model and synthetic preferences: good samples follow the song's pattern,
    bad ones on a dimension get distorted latents."""
    from dr2studio.checkpoints import save_dit
    from dr2studio.models.dit import DiT
    from dr2studio.style import save_style_embedding
    from training.smoke_data import synthetic_example

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    save_dit(DiT(DiTConfig(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=64, text_num_embeds=512, block_size=5)), root / "base")
    g = torch.Generator().manual_seed(cfg.seed)
    lines = []
    dims = ("musicality", "lyric_accuracy", "style_similarity", "audio_quality")
    for p in range(4):
        ex = synthetic_example(p, min_frames=20, max_frames=30)
        save_style_embedding(ex.style, root / f"style{p}.npy")
        for k in range(8):
            labels = {d: int(torch.rand((), generator=g) < 0.6) for d in dims}
            if k == 0:
                labels = dict.fromkeys(dims, 1)
            bad = 4 - sum(labels.values())
            lat = ex.latents + 0.3 * bad * torch.randn(ex.latents.shape, generator=g)
            name = f"p{p}-{k}.npy"
            np.save(root / name, lat.numpy())
            lines.append(json.dumps({"prompt": f"p{p}", "tokens": ex.tokens.tolist(), "style_embedding": f"style{p}.npy",
                                     "latents": name, "labels": labels}))
    (root / "preferences.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg.preferences, cfg.init_from = str(root / "preferences.jsonl"), str(root / "base")


def main(argv: Sequence[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, args = common.parse_args(CPPOTrainConfig, smoke_config, argv, description=__doc__.splitlines()[0])
    if args.smoke and not cfg.preferences:
        _make_smoke_data(cfg, common.run_dir(cfg) / "smoke-data")
    if not cfg.preferences or not cfg.init_from:
        raise SystemExit("training.cppo: set `preferences` (JSONL) and `init_from` (a model directory), or use --smoke")
    work = common.run_dir(cfg)
    common.claim_run(cfg)  # before writing pair files into the folder (each group's run is claimed by fit)
    work.mkdir(parents=True, exist_ok=True)
    candidates = load_candidates(cfg.preferences, cfg)
    states, info = [], {}
    for group in cfg.groups:
        pairs_file, counts = write_pairs(candidates, group, work, cfg)
        log.info("group %s: %s pairs per losing case", group, counts)
        run = dataclasses.replace(cfg, name=f"{cfg.name}-{group}", pairs_file=str(pairs_file), groups=[group],
                                  merge_weights=[])
        result = common.fit(train_loop, run)
        with result.checkpoint.as_directory() as d:
            states.append(_policy_state(d))
            info[group] = {"pairs_per_case": counts, "step": common.read_checkpoint_meta(d)["step"]}
    merged = average_state_dicts(states, cfg.merge_weights or None)
    out = export_dit(merged, DiTConfig.load(Path(cfg.init_from) / "model.json"), common.export_dir(cfg),
                     assets_dir=cfg.init_from, stage="cppo",
                     info={"groups": info, "merge": "weight average", "merge_weights": cfg.merge_weights or "equal",
                           "beta": cfg.beta, "init_from": cfg.init_from})
    log.info("exported %s", out)
    return out


if __name__ == "__main__":
    main()
