"""``dr2studio prefs export``: a project of real takes (the shipped demo model, ``dr2studio stems``), rated
through the doors and scored, becomes CPPO candidates; bad projects are refused with nothing written; and
(slow) ``training.cppo --config`` trains from the export and exports a model that ``Studio`` loads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dr2studio.cli import main
from dr2studio.demo import demo_model_dir
from dr2studio.flow.preference import Candidate
from dr2studio.prefs import SCORES_NAME, PrefsError, export_candidates
from dr2studio.ratings import RATINGS_NAME, RatingStore
from dr2studio.song import Song
from dr2studio.studio import Studio

LYRICS = "[verse]\nCity lights are calling me tonight"
STYLE = "pop, 120 bpm"
#: take -> (musicality, lyric_accuracy, style_similarity, audio_quality) stars
PLAN = {"t0": (5, 5, 5, 5), "t1": (1, 5, 1, 5), "t2": (5, 1, 5, 1), "t3": (1, 1, 1, 1)}


def _stems(song: Path, project: Path, take: str) -> None:
    result = CliRunner().invoke(main, ["stems", str(song), "--project", str(project), "--take", take, "-q",
                                       "--preset", "clean"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, Path]:
    """Five real demo-model songs (same lyrics and style, seeds 0..4) with their sidecars."""
    folder = tmp_path_factory.mktemp("songs")
    studio = Studio.load()
    out = {}
    for seed in range(5):
        song = studio.generate(LYRICS, STYLE, 1.0, steps=2, seed=seed)
        out[f"t{seed}"] = song.save(folder / f"t{seed}.wav")
    return out


@pytest.fixture(scope="module")
def project(songs, tmp_path_factory) -> Path:
    """Takes t0..t4 rated / scored per PLAN, plus takes that must be left out, each for its own reason."""
    root = tmp_path_factory.mktemp("proj") / "proj"
    for take, song in songs.items():
        _stems(song, root, take)
    folder = songs["t0"].parent
    other = Song.load(songs["t0"])
    other.model = "feedfacefeedface"  # a sidecar another model wrote
    _stems(other.save(folder / "other.wav"), root, "other")
    plain = Song(audio=Song.load(songs["t1"]).audio, sample_rate=8000).save(folder / "plain.wav")  # no sidecar
    _stems(plain, root, "plain")
    for name in ("gone.wav", "gone.dr2.safetensors"):
        shutil.copy(folder / ("t2" + name[4:]), folder / name)
    _stems(folder / "gone.wav", root, "gone")
    (folder / "gone.wav").unlink()
    _stems(songs["t3"], root, "partial")
    _stems(songs["t3"], root, "unrated")

    store = RatingStore(root)
    runner = CliRunner()
    for take, stars in PLAN.items():
        for dim, n in zip(("musicality", "lyric_accuracy", "style_similarity", "audio_quality"), stars):
            if take == "t0":
                Studio.rate(root, take, n)  # an overall rating fills every dimension
                break
            result = runner.invoke(main, ["rate", str(root), take, "--stars", str(n), "--dimension", dim])
            assert result.exit_code == 0, result.output
    for take in ("other", "plain", "gone"):
        store.rate(take, 5, source="web")
    store.rate("partial", 4, dimension="musicality", source="web")
    scores = [{"take": "t4", "time": "2026-12-07T01:00:00+00:00", "scores": dict.fromkeys(PLAN_DIMS, 0.1), "details": {}},
              {"take": "t4", "time": "2026-12-07T02:00:00+00:00", "scores": dict.fromkeys(PLAN_DIMS, 0.9), "details": {}},
              {"take": "t0", "time": "2026-12-07T02:00:00+00:00", "scores": dict.fromkeys(PLAN_DIMS, 0.0), "details": {}}]
    (root / SCORES_NAME).write_text("".join(json.dumps(s) + "\n" for s in scores))
    return root


PLAN_DIMS = ("musicality", "lyric_accuracy", "style_similarity", "audio_quality")


def _export(*args: str) -> dict:
    result = CliRunner().invoke(main, ["prefs", "export", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_export_labels_pairs_and_reasons(project: Path, songs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "prefs" / "candidates.jsonl"
    out.parent.mkdir()
    report = _export(str(project), "-o", str(out))
    assert report["candidates"] == 5 and report["prompts"] == 1  # same lyrics and style: one prompt
    assert report["fingerprint"] == Studio.load().fingerprint
    assert report["label_sources"] == {"rating": 16, "score": 4}
    for group in ("musicality_lyrics", "style_quality"):  # winners t0, t4; t1 / t2 / t3 lose one way each
        assert report["groups"][group]["available"] == {"first": 2, "second": 2, "both": 2}
        assert report["groups"][group]["pairs"] == 6 and report["groups"][group]["note"] is None
    reasons = {item["take"]: item["reason"] for item in report["left_out"]}
    assert set(reasons) == {"other", "plain", "gone", "partial", "unrated"}
    assert reasons["other"].startswith("sidecar from another model (feedfacefeedface;")
    assert reasons["plain"].startswith("no sidecar beside")
    assert reasons["gone"].startswith("song file") and "is missing" in reasons["gone"]
    assert reasons["partial"] == "no label for lyric_accuracy, style_similarity, audio_quality (not rated, not scored)"
    assert reasons["unrated"] == "unrated and unscored"

    lines = {rec["take"]: rec for rec in map(json.loads, out.read_text().splitlines())}
    assert set(lines) == {"t0", "t1", "t2", "t3", "t4"}
    assert lines["t0"]["labels"] == dict.fromkeys(PLAN_DIMS, 1.0)  # rated 5: the rating wins over the score 0.0
    assert lines["t1"]["labels"] == {"musicality": 0.0, "lyric_accuracy": 1.0, "style_similarity": 0.0, "audio_quality": 1.0}
    assert lines["t4"]["labels"] == dict.fromkeys(PLAN_DIMS, 0.9)  # the newest score
    assert lines["t4"]["label_sources"] == dict.fromkeys(PLAN_DIMS, "score")
    for take, rec in lines.items():
        song = Song.load(songs[take])
        tensors = load_file(str(out.parent / rec["latents"]))
        assert rec["latents"] == rec["style_embedding"] and not Path(rec["latents"]).is_absolute()
        assert torch.equal(tensors["latents"], song.latents[0]) and torch.equal(tensors["style"], song.style)
        assert rec["tokens"] == song.tokens.tolist() and rec["seed"] == song.seed and rec["lyrics"] == LYRICS
    data = out.parent / report["data"].split("/")[-1]
    assert data.is_dir() and len(list(data.iterdir())) == 5

    # training's reader takes the file as it is: five candidates, labels and latents intact
    from training.cppo import CPPOTrainConfig, load_candidates

    candidates = load_candidates(out, CPPOTrainConfig(init_from=str(demo_model_dir())))
    assert len(candidates) == 5 and {c.prompt for c in candidates} == {lines["t0"]["prompt"]}
    assert sorted(c.payload["example"].latents.shape[0] for c in candidates) == [40] * 5  # 1 s at 40 Hz

    # a second export replaces the first whole: the old tensor folder goes, the new one is complete
    again = _export(str(project), "-o", str(out), "--min-stars", "4", "--threshold", "0.8")
    assert not data.exists() and Path(again["data"]).is_dir()
    assert {p.name for p in out.parent.iterdir()} == {"candidates.jsonl", Path(again["data"]).name}  # no temporaries
    binary = {rec["take"]: rec["labels"] for rec in map(json.loads, out.read_text().splitlines())}
    assert binary["t1"]["musicality"] == 0.0 and binary["t1"]["lyric_accuracy"] == 1.0 and binary["t4"]["musicality"] == 0.9
    assert again["groups"]["musicality_lyrics"]["pairs"] == 6  # 0.9 still counts as good at 0.8
    summary = CliRunner().invoke(main, ["prefs", "export", str(project), "-o", str(out)])
    assert summary.exit_code == 0, summary.output
    assert "5 candidates over 1 prompt(s)" in summary.output and "6 balanced pairs" in summary.output
    assert "left out 5 take(s)" in summary.output and "proj/unrated: unrated and unscored" in summary.output
    show = CliRunner().invoke(main, ["rate", str(project), "t1", "--json"])
    assert show.exit_code == 0 and json.loads(show.output)["current"]["lyric_accuracy"] == 5.0


def test_export_refuses_bad_projects_and_writes_nothing(project: Path, songs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "candidates.jsonl"
    out.write_text("earlier export\n")
    unrated = tmp_path / "unrated"
    _stems(songs["t1"], unrated, "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    runner = CliRunner()
    cases = [
        ([str(unrated)], "no rated or scored takes in"),
        ([str(empty)], "has no takes"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(project), "--threshold", "0"], "0<x<=1"),
        ([str(project), "--min-stars", "6"], "stars must be an integer in [1, 5], got 6"),
        ([str(project), "--model", str(songs["t0"].parent)], "model.json"),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["prefs", "export", *args, "-o", str(out)])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    # every take's sidecar from another model than --model: all left out, an error naming why
    other = tmp_path / "other-model"
    shutil.copytree(demo_model_dir(), other)
    (other / "model.json").write_text((other / "model.json").read_text() + "\n")  # another fingerprint
    with pytest.raises(PrefsError, match="no usable take .*sidecar from another model"):
        export_candidates([project], out, model=other)
    # unreadable ratings or scores: the line is named
    broken = tmp_path / "broken"
    shutil.copytree(project, broken)
    (broken / SCORES_NAME).write_text('{"take": "t4", "time": "x", "scores": {"musicality": 3}}\n')
    with pytest.raises(PrefsError, match=rf"{SCORES_NAME}:1: score musicality must be a number in \[0, 1\]"):
        export_candidates([broken], out)
    (broken / SCORES_NAME).unlink()
    with (broken / RATINGS_NAME).open("a") as f:
        f.write("not json\n")
    with pytest.raises(PrefsError, match=rf"{RATINGS_NAME}:\d+: corrupt rating"):
        export_candidates([broken], out)
    assert out.read_text() == "earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".latents") or ".latents." in p.name) == []


@pytest.mark.slow
def test_cppo_trains_from_an_exported_project_and_studio_loads_the_model(project: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from training import cppo

    prefs = tmp_path / "candidates.jsonl"
    export_candidates([project], prefs)
    config = {"name": "prefs-e2e", "storage_path": str(tmp_path / "runs"), "preferences": str(prefs),
              "init_from": str(demo_model_dir()), "num_workers": 1, "max_steps": 1, "batch_size": 1,
              "warmup_steps": 1, "checkpoint_every": 1, "report_every": 1, "mixed_precision": "fp32",
              "label_threshold": 0.5, "max_frames": 40, "beta": 50.0}
    (tmp_path / "cppo.json").write_text(json.dumps(config))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = cppo.main(["--config", str(tmp_path / "cppo.json")])
    finally:
        ray.shutdown()
    info = json.loads((out / "dr2studio.json").read_text())["training"]["cppo"]
    assert {g: v["pairs_per_case"] for g, v in info["groups"].items()} == {
        "musicality_lyrics": {"first": 2, "second": 2, "both": 2}, "style_quality": {"first": 2, "second": 2, "both": 2}}
    studio = Studio.load(out)
    assert studio.fingerprint != Studio.load().fingerprint  # trained weights, a new model
    song = studio.generate(LYRICS, STYLE, 0.5, steps=2, seed=0)
    assert song.audio.shape[-1] > 0 and torch.isfinite(song.audio).all()


def test_signal_scored_takes_pair_on_the_groups_they_have_labels_for(songs: dict[str, Path], tmp_path: Path) -> None:
    """`dr2studio eval` without an ASR gives no lyric accuracy: such takes still pair on style + quality,
    and CPPO's pairing takes them for that group only."""
    from dr2studio.flow.preference import build_pairs, labelled_for

    root = tmp_path / "signal"
    for take in ("t0", "t1", "t2"):
        _stems(songs[take], root, take)
    values = {"t0": (0.9, 0.9, 0.9), "t1": (0.9, 0.2, 0.9), "t2": (0.8, 0.1, 0.95)}  # musicality, style, quality
    lines = [{"take": t, "time": "2026-12-07T03:00:00+00:00", "details": {},
              "scores": {"musicality": m, "lyric_accuracy": None, "style_similarity": st, "audio_quality": q}}
             for t, (m, st, q) in values.items()]
    (root / SCORES_NAME).write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "signal.jsonl"
    report = _export(str(root), "-o", str(out))
    assert report["left_out"] == [] and report["candidates"] == 3
    groups = report["groups"]
    assert groups["style_quality"]["available"] == {"first": 2, "second": 0, "both": 0}
    assert groups["musicality_lyrics"]["available"] == {"first": 0, "second": 0, "both": 0}
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert all("lyric_accuracy" not in w["labels"] for w in written)
    cands = [Candidate(str(i), w["prompt"], w["labels"]) for i, w in enumerate(written)]
    assert labelled_for(cands, "musicality_lyrics") == []
    pairs = build_pairs(labelled_for(cands, "style_quality"), "style_quality", balance=False)
    assert {(p.chosen.id, p.rejected.id) for p in pairs} == {("0", "1"), ("0", "2")}
