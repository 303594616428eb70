"""CPPO pairing, the flow-matching DPO loss and weight-averaging merge."""
from __future__ import annotations

import copy
import itertools
import math
from collections import Counter

import pytest
import torch

from dr2studio.flow.block_fm import BlockFlowMatching
from dr2studio.flow.preference import (
    PAIR_GROUPS,
    Candidate,
    FlowErrors,
    PreferenceError,
    average_state_dicts,
    build_pairs,
    fm_dpo_loss,
    is_good,
    shared_noise,
)
from dr2studio.models.dit import DiT, DiTConfig


def _candidates(prompts=3):
    out = []
    for p in range(prompts):
        for k, labels in enumerate(itertools.product([0, 1], repeat=4)):
            out.append(Candidate(f"p{p}-{k}", f"p{p}", dict(zip(
                ("musicality", "lyric_accuracy", "style_similarity", "audio_quality"), labels))))
    return out


@pytest.mark.parametrize("group", sorted(PAIR_GROUPS))
def test_pairs_follow_the_group_rule_and_balance_losing_cases(group):
    d1, d2 = PAIR_GROUPS[group]
    cands = _candidates()
    # make the "second only" case rarer so balancing has to down-sample the others
    cands = [c for c in cands if not (c.labels[d1] and not c.labels[d2] and c.prompt != "p0")]
    pairs = build_pairs(cands, group, seed=1)
    cases = Counter(p.case for p in pairs)
    assert set(cases) == {"first", "second", "both"} and len(set(cases.values())) == 1
    for p in pairs:
        assert p.chosen.prompt == p.rejected.prompt == p.prompt
        assert is_good(p.chosen, d1) and is_good(p.chosen, d2)
        assert not (is_good(p.rejected, d1) and is_good(p.rejected, d2))
        want = {"first": (False, True), "second": (True, False), "both": (False, False)}[p.case]
        assert (is_good(p.rejected, d1), is_good(p.rejected, d2)) == want
    assert build_pairs(cands, group, seed=1) == pairs  # seeded


def test_pairing_errors_name_the_missing_case_and_label():
    cands = [c for c in _candidates(1) if c.labels["musicality"] or c.labels["lyric_accuracy"]]
    with pytest.raises(PreferenceError, match=r"musicality_lyrics.*\['both'\]"):
        build_pairs(cands, "musicality_lyrics")
    with pytest.raises(PreferenceError, match="no label for 'audio_quality'"):
        build_pairs([Candidate("a", "p", {"style_similarity": 1})], "style_quality")


def test_dpo_loss_is_log2_at_the_reference_and_prefers_the_chosen():
    e = torch.tensor([0.5, 0.7])
    loss, m = fm_dpo_loss(e, e + 0.1, e, e + 0.1, beta=10.0)
    assert loss.item() == pytest.approx(math.log(2))
    better, m = fm_dpo_loss(e - 0.05, e + 0.1, e, e + 0.1, beta=10.0)
    assert better.item() < math.log(2) and m["reward_accuracy"] == 1.0


def _tiny_objective(seed=0):
    torch.manual_seed(seed)
    cfg = DiTConfig(dim=32, depth=2, heads=2, ff_mult=2, mel_dim=8, text_num_embeds=64, block_size=4)
    return BlockFlowMatching(DiT(cfg))


def test_dpo_steps_move_the_policy_toward_the_chosen_sample():
    policy = _tiny_objective()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    pol_err, ref_err = FlowErrors(policy), FlowErrors(ref)
    g = torch.Generator().manual_seed(0)
    chosen = torch.sin(torch.arange(10.0))[None, :, None].expand(2, 10, 8).clone()
    rejected = torch.randn(2, 10, 8, generator=g)
    lengths = torch.tensor([10, 9])
    tokens, tlen = torch.randint(1, 60, (2, 5), generator=g), torch.tensor([5, 4])
    style = torch.randn(2, 512, generator=g)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    accs = []
    for _ in range(12):
        noise, t = shared_noise(lengths, 4, 8, generator=g)
        both = torch.cat((chosen, rejected))
        err = pol_err(both, lengths.repeat(2), tokens.repeat(2, 1), tlen.repeat(2), style.repeat(2, 1),
                      noise.repeat(2, 1, 1), t.repeat(2, 1))
        with torch.no_grad():
            r = ref_err(both, lengths.repeat(2), tokens.repeat(2, 1), tlen.repeat(2), style.repeat(2, 1),
                        noise.repeat(2, 1, 1), t.repeat(2, 1))
        loss, m = fm_dpo_loss(err[:2], err[2:], r[:2], r[2:], beta=50.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append(m["dpo_margin"])
    assert accs[-1] < 0 and sum(accs[-3:]) < sum(accs[:3])


def test_flow_errors_use_the_given_noise():
    obj = _tiny_objective()
    fe = FlowErrors(obj).eval()
    lat = torch.randn(1, 7, 8)
    noise, t = shared_noise(torch.tensor([7]), 4, 8, generator=torch.Generator().manual_seed(3))
    args = (lat, torch.tensor([7]), torch.ones(1, 3, dtype=torch.long), torch.tensor([3]), torch.zeros(1, 512))
    a, b = fe(*args, noise, t), fe(*args, noise, t)
    c = fe(*args, torch.randn_like(noise), t)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="noise covers"):
        fe(*args, noise[:, :3], t)


def test_average_state_dicts_is_the_weighted_mean():
    a, b = _tiny_objective(0).model.state_dict(), _tiny_objective(1).model.state_dict()
    m = average_state_dicts([a, b], [1, 3])
    k = "proj_out.weight"
    assert torch.allclose(m[k], 0.25 * a[k] + 0.75 * b[k], atol=1e-6)
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([a, {"x": torch.zeros(1)}])
