"""``training/mine_candidates.py``: prompt sets are read with clear errors, and mining with the shipped demo
model in Ray tasks writes scored candidates that ``training/cppo.py``'s ``load_candidates`` accepts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dr2studio.demo import demo_model_dir
from training import mine_candidates as mc
from training.cppo import CPPOTrainConfig, load_candidates

LYRICS = "[verse]\n[00:00.50]City lights are calling\n[00:01.50]Calling me tonight"


def test_prompt_sets_are_read_and_bad_ones_refused(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "a", "lyrics": LYRICS, "style": "pop, 120 bpm, A minor"}) + "\n\n"
                    + json.dumps({"lyrics": LYRICS, "style": "rock", "duration": 3}) + "\n")
    prompts = mc.load_prompts(good, 12.0)
    assert [(p.prompt, p.duration) for p in prompts] == [("a", 12.0), ("p0003", 3.0)]
    as_list = tmp_path / "p.json"
    as_list.write_text(json.dumps([{"lyrics": LYRICS, "style": "pop"}]))
    assert mc.load_prompts(as_list, 5.0)[0].prompt == "p0001"
    cases = {
        "{not json\n": "p.bad:1: malformed JSON",
        json.dumps({"lyrics": LYRICS}) + "\n": "'style' must be a non-empty text",
        json.dumps({"lyrics": LYRICS, "style": "x", "duration": 0}) + "\n": "duration must be 1..600 s",
        (json.dumps({"prompt": "a", "lyrics": "x", "style": "y"}) + "\n") * 2: "prompt id 'a' appears twice",
        "[1, 2]": "a prompt must be an object",
        "": "no prompts",
    }
    bad = tmp_path / "p.bad"
    for text, msg in cases.items():
        bad.write_text(text)
        with pytest.raises(mc.MiningError, match=msg):
            mc.load_prompts(bad, 5.0)
    with pytest.raises(mc.MiningError, match="not found"):
        mc.load_prompts(tmp_path / "missing.jsonl", 5.0)
    with pytest.raises(mc.MiningError, match="held-out"):
        mc.make_prompts(3, mc.HELD_OUT_SEED - 1, 10.0)
    made = mc.make_prompts(2, 0, 10.0)
    assert all("bpm" in p.style and "[verse]" in p.lyrics for p in made) and made[0].prompt == "s0000000"


def test_pair_counts_say_why_a_group_yields_nothing() -> None:
    recs = [{"prompt": "a", "labels": {"musicality": 0.9, "style_similarity": s, "audio_quality": q}}
            for s, q in ((0.9, 1.0), (0.1, 1.0), (0.2, 0.9), (0.9, 0.2))]
    counts = mc.pair_counts(recs, 0.5)
    assert "lyric_accuracy" in counts["musicality_lyrics"]["reason"]
    sq = counts["style_quality"]
    assert sq["pairs_per_case"] == {"first": 2, "second": 1, "both": 0} and sq["balanced_pairs"] == 0
    assert "both" in sq["reason"]


@pytest.mark.slow
def test_mining_writes_candidates_cppo_loads(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "p", "lyrics": LYRICS, "style": "pop, 120 bpm, A minor", "duration": 2.5}) + "\n")
    out = tmp_path / "mined"
    rc = mc.main(["--prompts", str(prompts), "--model", str(demo_model_dir()), "--out", str(out), "--k", "2",
                  "--steps", "2", "--workers", "1"])
    assert rc == 0
    import ray

    assert not ray.is_initialized()  # the Ray it started is shut down: the next caller may start its own
    lines = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in lines] == [0, 1] and {r["prompt"] for r in lines} == {"p"}
    for r in lines:
        assert set(r["labels"]) == {"musicality", "style_similarity", "audio_quality"}
        assert all(0.0 <= v <= 1.0 for v in r["labels"].values()) and r["scores"]["lyric_accuracy"] is None
        lat = load_file(str(out / r["latents"]))["latents"]
        assert lat.ndim == 2 and lat.shape[1] == 32 and lat.shape[0] == 100  # 2.5 s at 40 frames/s
    summary = json.loads((out / "mining.json").read_text())
    assert summary["candidates"] == 2 and "musicality_lyrics" in summary["groups"]
    cands = load_candidates(out / "candidates.jsonl", CPPOTrainConfig(init_from=str(demo_model_dir())))
    assert len(cands) == 2 and cands[0].labels == lines[0]["labels"]
    ex = cands[0].payload["example"]
    assert ex.tempo == 120.0 and ex.tokens.tolist() == lines[0]["tokens"] and ex.style.shape == (512,)
    assert mc.main(["--prompts", str(prompts), "--model", str(demo_model_dir()), "--out", str(out), "--k", "1"]) == 2


def test_unbalanced_pairing_keeps_every_pair_of_automatic_labels() -> None:
    from dr2studio.flow.preference import Candidate, PreferenceError, build_pairs

    def c(i: int, prompt: str, style: float) -> Candidate:
        return Candidate(str(i), prompt, {"style_similarity": style, "audio_quality": 1.0})

    cands = [c(0, "a", 1.0), c(1, "a", 0.0), c(2, "a", 0.2), c(3, "b", 1.0), c(4, "b", 0.9), c(5, "c", 0.1)]
    with pytest.raises(PreferenceError, match="second"):  # audio quality never loses: balancing leaves nothing
        build_pairs(cands, "style_quality")
    pairs = build_pairs(cands, "style_quality", balance=False)
    assert sorted((p.chosen.id, p.rejected.id) for p in pairs) == [("0", "1"), ("0", "2")]
    assert {p.case for p in pairs} == {"first"} and len(build_pairs(cands, "style_quality", balance=False, max_pairs=1)) == 1
    with pytest.raises(PreferenceError, match="no prompt has both"):
        build_pairs([c(0, "a", 1.0), c(1, "b", 0.0)], "style_quality", balance=False)
