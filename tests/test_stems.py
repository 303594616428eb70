"""Source separation (Hybrid Demucs, random weights), stem rendering and project export."""
from __future__ import annotations

import json
import math
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from real_material import shared_real
from torchaudio.models import HDemucs

from daw_helpers import REAPER_STUB
from dr2studio.audio.daw import project_layout, read_manifest
from dr2studio.audio.effects import integrated_loudness, list_presets, load_preset
from dr2studio.audio.io import read_audio, write_audio
from dr2studio.audio.project_manifest import SCHEMA_VERSION
from dr2studio.audio.stems import STEMS, SeparationError, Separator, export_stems, load_separator, render_stem
from dr2studio.cli import main
from dr2studio.song import Song

SR = 48000
SOURCES = ["drums", "bass", "other", "vocals"]


def _small_demucs() -> HDemucs:
    """The hdemucs_high architecture (nfft 4096, depth 6) with few channels: real code, fast on CPU."""
    torch.manual_seed(0)
    return HDemucs(sources=list(SOURCES), channels=4, growth=2, nfft=4096, depth=6)


class _Gains(torch.nn.Module):
    """A separator whose sources are fixed gains of the mix, so overlap-add must be exact."""

    sources = SOURCES

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 2, L] -> [B, 4, 2, L]
        gains = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)
        return x.unsqueeze(1) * gains


def _noise(seconds: float, channels: int = 2, sr: int = SR) -> torch.Tensor:
    torch.manual_seed(1)
    return 0.1 * torch.randn(channels, int(seconds * sr))


def test_segmented_separation_blends_exactly() -> None:
    sep = Separator(_Gains(), segment_s=1.0, overlap_s=0.25)
    mix = _noise(3.3, sr=44100)
    out = sep.separate(mix, 44100)
    assert set(out) == set(SOURCES)
    for gain, name in zip([0.1, 0.2, 0.3, 0.4], SOURCES):
        assert out[name].shape == mix.shape
        assert torch.allclose(out[name], gain * mix, atol=1e-5), name


def test_demucs_random_weights_shapes_mono_and_stereo() -> None:
    sep = Separator(_small_demucs(), segment_s=1.0, overlap_s=0.25)
    stereo = sep.separate(_noise(1.5), SR)  # two overlapping segments
    assert {k: tuple(v.shape) for k, v in stereo.items()} == {k: (2, int(1.5 * SR)) for k in SOURCES}
    mono = sep.separate(_noise(0.5, channels=1), SR)
    assert all(v.shape == (1, SR // 2) and torch.isfinite(v).all() for v in mono.values())


def test_load_separator_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(SeparationError, match="cannot download the Hybrid Demucs weights.*--separator-weights"):
        load_separator(factory=_small_demucs)


def test_load_separator_local_weights(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(_small_demucs().state_dict(), weights)
    sep = load_separator(weights, factory=_small_demucs)
    assert sep.sources == SOURCES
    with pytest.raises(SeparationError, match="do not match"):
        load_separator(weights, factory=lambda: HDemucs(sources=list(SOURCES), channels=8, nfft=4096, depth=6))
    with pytest.raises(SeparationError, match="not found"):
        load_separator(tmp_path / "missing.pt")


def test_render_stem_targets_loudness_at_project_rate() -> None:
    preset = load_preset("balanced")
    out = render_stem("vocals", _noise(2.0), SR, preset, target_sample_rate=44100, loudness_lufs=-16.0)
    assert out.sample_rate == 44100 and out.audio.shape == (2, 88200)
    assert abs(integrated_loudness(out.audio, 44100) - (-16.0)) < 0.1
    assert float(out.audio.abs().max()) <= 10 ** (preset.peak_db / 20) + 1e-6


def test_export_stems_with_separation(tmp_path: Path) -> None:
    song = Song(audio=_noise(1.0), sample_rate=SR, lyrics="[verse]\nla", seed=5, settings={"steps": 4})
    song.path = tmp_path / "take.wav"
    calls = []
    entry = export_stems(song, tmp_path / "proj", daw="generic", preset="clean", separate=True, sample_rate=44100,
                         position=12.5, separator=Separator(_small_demucs(), segment_s=1.0, overlap_s=0.25),
                         progress=lambda *a: calls.append(a))
    folder = tmp_path / "proj" / "dr2" / "take"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    for name in STEMS:
        audio, rate = read_audio(folder / f"{name}.wav")
        assert rate == 44100 and audio.shape == (2, 44100)
    manifest = json.loads((tmp_path / "proj" / "dr2studio.json").read_text())
    (take,) = manifest["takes"]
    assert take == entry
    assert take["position_seconds"] == 12.5 and take["seed"] == 5 and take["separated"] is True
    assert take["lyrics"] == "[verse]\nla" and take["preset"] == "clean" and take["origin"] == "api"
    assert take["files"]["vocals"] == "dr2/take/vocals.wav"
    assert take["sample_rate"] == 44100 and take["source_sample_rate"] == SR and take["duration_seconds"] == 1.0
    assert take["stems"]["mix"]["target_lufs"] == -14.0 and abs(take["stems"]["mix"]["loudness_lufs"] - (-14.0)) < 0.1
    assert [c[2] for c in calls][0] == "separate" and calls[-1][0] == calls[-1][1] == len(STEMS) + 1


def test_export_stems_checks_before_writing(tmp_path: Path) -> None:
    song = Song(audio=_noise(0.5), sample_rate=SR)
    with pytest.raises(ValueError, match="sample rate"):
        export_stems(song, tmp_path / "p", sample_rate=1000)
    with pytest.raises(ValueError, match="unknown preset"):
        export_stems(song, tmp_path / "p", preset="nope")
    assert not (tmp_path / "p").exists()



# -- stems at any rate ---------------------------------------------------------------------------------

def _song_at(rate: int, seconds: float = 3.0) -> Song:
    """A stereo chord with a pulse at ``rate`` (an 8 kHz demo take, a 44.1 kHz CD rip, 48 kHz)."""
    t = torch.arange(int(seconds * rate)) / rate
    x = sum(0.15 * torch.sin(2 * math.pi * f * t) for f in (110.0, 220.0, 330.0, 1760.0))
    x = x * (0.6 + 0.4 * (torch.sin(2 * math.pi * 2.0 * t) > 0))
    return Song(audio=torch.stack([x, 0.8 * x]), sample_rate=rate, seed=1)


def _real_2wav(seconds: float = 6.0) -> Song:
    """The authors' recording 2.wav (44.1 kHz stereo), cut to ``seconds`` to keep the test quick."""
    audio, rate = read_audio(shared_real("2.wav"))
    assert rate == 44100
    return Song(audio=audio[:, : int(seconds * rate)], sample_rate=rate)


def _read_back(project: Path, entry: dict) -> dict[str, tuple[torch.Tensor, sf._SoundFileInfo]]:
    out = {}
    for stem, rel in entry["files"].items():
        info = sf.info(str(project / rel))
        audio, _ = read_audio(project / rel)
        out[stem] = (audio, info)
    return out


@pytest.mark.parametrize("source_rate", [8000, 44100, 48000])
def test_every_shipped_preset_renders_at_every_input_rate(tmp_path: Path, source_rate: int) -> None:
    song = _real_2wav() if source_rate == 44100 else _song_at(source_rate)
    project = tmp_path / "proj"
    for preset in list_presets():  # every stem chain of every preset: the gain separator feeds each one
        entry = export_stems(song, project, preset=preset, separate=True,
                             separator=Separator(_Gains(), segment_s=2.0, overlap_s=0.5))
        assert entry["sample_rate"] == 48000 and entry["source_sample_rate"] == source_rate  # default project rate
        length = round(song.audio.shape[1] * 48000 / source_rate)
        files = _read_back(project, entry)
        assert set(files) == set(STEMS)
        for stem, (audio, info) in files.items():
            assert info.samplerate == 48000 and info.subtype == "PCM_24" and info.frames == length, (preset, stem)
            assert torch.isfinite(audio).all() and float(audio.abs().max()) > 0
            details = entry["stems"][stem]
            assert details["skipped_effects"] == [], (preset, stem)  # at 48 kHz every shipped effect runs
            assert abs(integrated_loudness(audio, 48000) - details["loudness_lufs"]) < 0.05  # what the file holds
            assert details["target_lufs"] == load_preset(preset).loudness_lufs
    assert len(read_manifest(project_layout(project))["takes"]) == len(list_presets())


def test_low_project_rate_skips_effects_above_nyquist_and_says_so(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    entry = export_stems(_song_at(8000), project, preset="balanced", sample_rate=8000)
    (audio, info), = _read_back(project, entry).values()
    assert info.samplerate == 8000 and info.frames == 3 * 8000 and info.subtype == "PCM_24"
    skipped = entry["stems"]["mix"]["skipped_effects"]
    assert len(skipped) == 1 and skipped[0].startswith("highshelf") and "Nyquist (4000 Hz)" in skipped[0]
    manifest = json.loads((project / "dr2studio.json").read_text())
    assert manifest["sample_rate"] == 8000 and manifest["takes"][0]["stems"]["mix"]["skipped_effects"] == skipped
    # the next take follows the project's rate without being told
    again = export_stems(_song_at(48000), project, preset="loud")
    assert again["sample_rate"] == 8000 and sf.info(str(project / again["files"]["mix"])).samplerate == 8000


def test_reaper_project_rate_is_the_default(tmp_path: Path) -> None:
    project = tmp_path / "rp"
    project.mkdir()
    (project / "song.rpp").write_text('<REAPER_PROJECT 0.1 "7.0"\n  SAMPLERATE 44100 0 0\n>\n')
    entry = export_stems(_song_at(8000), project, daw="reaper", preset="clean")
    assert entry["sample_rate"] == 44100 and sf.info(str(project / entry["files"]["mix"])).samplerate == 44100


def test_manifest_records_loudness_the_ceiling_held_below_target(tmp_path: Path) -> None:
    rate = 48000
    clicks = torch.zeros(2, 2 * rate)
    clicks[:, ::rate // 4] = 0.9  # sparse clicks: the -0.5 dBFS ceiling stops them long before -9 LUFS
    song = Song(audio=clicks, sample_rate=rate)
    entry = export_stems(song, tmp_path / "p", preset="loud")
    details = entry["stems"]["mix"]
    audio, _ = read_audio(tmp_path / "p" / entry["files"]["mix"])
    assert details["target_lufs"] == -9.0 and details["loudness_lufs"] < -12.0
    assert abs(integrated_loudness(audio, rate) - details["loudness_lufs"]) < 0.05
    assert details["peak_dbfs"] <= -0.5 + 1e-3


# -- one manifest schema -------------------------------------------------------------------------------

_V1_MANIFEST = {
    "format": "dr2studio-manifest", "version": 1, "daw": "reaper",
    "takes": [
        {"take": "old_cli", "created": "2026-01-01T00:00:00+00:00", "source": "/songs/a.wav", "position": 12.5,
         "duration": 8.0, "sample_rate": 44100, "lyrics": "la", "seed": 3, "settings": {"steps": 8}, "model": None,
         "preset": "balanced", "separated": False, "loudness": {"mix": -14.02},
         "files": {"mix": "Media/dr2/old_cli/mix.wav"}},
        {"take": "job1", "created": "2026-01-01T00:00:01+00:00", "source": "bridge", "job": "job1", "kind": "generate",
         "position_beats": 16.0, "position_seconds": 8.0, "bpm": 120.0, "timesig": [4, 4], "lyrics": None,
         "style": "pop", "seed": 7, "settings": {"steps": 4, "cfg_strength": 2.0, "fx": {"mix": "clean"}},
         "files": {"mix": "Media/dr2/job1/mix.wav"}},
    ],
}


def test_schema_1_manifest_is_upgraded_not_discarded(tmp_path: Path) -> None:
    project = tmp_path / "rp"
    project.mkdir()
    (project / "dr2studio.json").write_text(json.dumps(_V1_MANIFEST))
    export_stems(_song_at(8000), project, daw="reaper", preset="clean", position=32.0, take="new")
    manifest = json.loads((project / "dr2studio.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and "version" not in manifest
    assert manifest["sample_rate"] == 44100  # the old takes' rate is the project's rate
    old, job, new = manifest["takes"]
    assert (old["origin"], old["position_seconds"], old["duration_seconds"], old["seed"]) == ("cli", 12.5, 8.0, 3)
    assert old["stems"]["mix"] == {"preset": "balanced", "target_lufs": None, "loudness_lufs": -14.02,
                                   "peak_dbfs": None, "skipped_effects": []}
    assert "position" not in old and "loudness" not in old and old["files"] == _V1_MANIFEST["takes"][0]["files"]
    assert (job["origin"], job["source"], job["position_seconds"], job["position_beats"]) == ("bridge", None, 8.0, 16.0)
    assert job["stems"]["mix"]["preset"] == "clean" and job["style"] == "pop"
    assert (new["origin"], new["position_seconds"], new["sample_rate"]) == ("api", 32.0, 44100)
    assert set(new) >= set(old) - {"settings"}  # one shape for every take
    assert [p.name for p in project.iterdir() if ".tmp" in p.name] == []


# -- bad input: one line, non-zero exit, nothing written ------------------------------------------------

def _cli(*args: object) -> object:
    return CliRunner().invoke(main, ["stems", *[str(a) for a in args]])


def _one_line_error(result: object, needle: str) -> None:
    assert result.exit_code != 0 and "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def test_cli_bad_input_writes_nothing(tmp_path: Path) -> None:
    song = tmp_path / "take.wav"
    write_audio(song, _song_at(8000, 1.0).audio, 8000)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file")
    project = tmp_path / "proj"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "dr2studio.json").write_text(json.dumps({"schema_version": 99, "takes": []}))
    cases = [
        ((song, "--project", project, "--preset", "nope"), "unknown preset 'nope'", project),
        ((garbage, "--project", project), "garbage.wav", project),
        ((tmp_path / "missing.wav", "--project", project), "missing.wav", project),
        ((song, "--project", a_file), "is a file", None),
        ((song, "--project", project, "--sample-rate", "4000"), "--sample-rate", project),
        ((song, "--project", newer), "newer than this dr2studio", None),
    ]
    for args, needle, must_not_exist in cases:
        _one_line_error(_cli(*args), needle)
        if must_not_exist is not None:
            assert not must_not_exist.exists(), args
    assert a_file.read_text() == "x"
    assert sorted(p.name for p in newer.iterdir()) == ["dr2studio.json"]
    assert json.loads((newer / "dr2studio.json").read_text())["schema_version"] == 99


# -- the REAPER action places CLI and bridge takes -------------------------------------------------------



def test_reaper_action_places_cli_and_bridge_takes(tmp_path: Path) -> None:
    lupa = pytest.importorskip("lupa.lua54")
    from dr2studio.bridge.deliver import deliver_take
    from dr2studio.bridge.session import Session

    project = tmp_path / "reaper project"
    project.mkdir()
    (project / "song.rpp").write_text('<REAPER_PROJECT 0.1 "7.0"\n  RECORD_PATH "Audio" ""\n>\n')
    song = tmp_path / "take.wav"
    write_audio(song, _song_at(8000, 1.0).audio, 8000)
    result = _cli(song, "--project", project, "--daw", "reaper", "--position", "32", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["position_seconds"] == 32.0

    session = Session(project=project, daw="reaper", bpm=90.0)
    request = type("Request", (), {"kind": "generate", "lyrics": "la", "style": "pop", "steps": 4, "cfg_strength": 2.0})()
    region = (_song_at(8000, 1.0).audio, 8000)
    delivered = deliver_take(session, "job7", region, position_beats=24.0, position_seconds=session.seconds(24.0),
                             request=request, seed=9)
    assert [(f.stem, f.sample_rate) for f in delivered] == [("mix", 48000)]
    assert sf.info(str(delivered[0].path)).samplerate == 48000

    manifest = json.loads((project / "dr2studio.json").read_text())
    cli_take, bridge_take = manifest["takes"]
    assert set(cli_take) == set(bridge_take)  # one schema for both writers
    assert (cli_take["origin"], bridge_take["origin"]) == ("cli", "bridge")
    assert bridge_take["position_seconds"] == pytest.approx(16.0) and bridge_take["position_beats"] == 24.0

    lua = lupa.LuaRuntime()
    lua.globals().PROJECT_FILE = str(project / "song.rpp")
    lua.execute(REAPER_STUB)
    script = (Path(__file__).resolve().parents[1] / "bridges" / "reaper" / "dr2_import_takes.lua").read_text(encoding="utf-8")
    lua.execute(script)
    placed = lua.globals().placed
    items = [dict(placed[i].items()) for i in range(1, len(placed) + 1)]
    assert [(i["track"], i["file"], i["D_POSITION"]) for i in items] == [
        ("dr2 mix", str(project / "Audio/dr2/take/mix.wav"), 32.0),
        ("dr2 mix", str(project / "Audio/dr2/job7/mix.wav"), pytest.approx(16.0)),
    ]


def test_reaper_action_reads_a_schema_1_cli_take(tmp_path: Path) -> None:
    """A manifest nobody has rewritten since schema 1: the CLI take's ``position`` still places it."""
    lupa = pytest.importorskip("lupa.lua54")
    project = tmp_path / "rp"
    (project / "Media/dr2/old_cli").mkdir(parents=True)
    write_audio(project / "Media/dr2/old_cli/mix.wav", _song_at(8000, 0.5).audio, 8000)
    (project / "song.rpp").write_text("<REAPER_PROJECT\n>\n")
    (project / "dr2studio.json").write_text(json.dumps({**_V1_MANIFEST, "takes": _V1_MANIFEST["takes"][:1]}))
    lua = lupa.LuaRuntime()
    lua.globals().PROJECT_FILE = str(project / "song.rpp")
    lua.execute(REAPER_STUB)
    lua.execute((Path(__file__).resolve().parents[1] / "bridges" / "reaper" / "dr2_import_takes.lua").read_text())
    placed = lua.globals().placed
    assert len(placed) == 1 and placed[1]["D_POSITION"] == 12.5


# -- a project from someone else: links out of it are refused, nothing lands outside (issue 18) ----------

def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A short song, a project folder and an ``outside`` folder the project's links lead to."""
    song = tmp_path / "take.wav"
    write_audio(song, _song_at(8000, 0.5).audio, 8000)
    project, outside = tmp_path / "proj", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    return song, project, outside


@pytest.mark.parametrize("daw, link", [
    ("generic", "dr2"),
    ("ableton", "Samples"),
    ("ableton", "Samples/Imported"),
    ("ableton", "Samples/Imported/dr2"),
    ("reaper", "Media"),
    ("reaper", "Media/dr2"),
])
def test_cli_stems_refuses_a_link_out_of_the_project(hostile: tuple[Path, Path, Path], daw: str, link: str) -> None:
    song, project, outside = hostile
    (project / link).parent.mkdir(parents=True, exist_ok=True)
    (project / link).symlink_to(outside)
    before = _tree(project)
    _one_line_error(_cli(song, "--project", project, "--daw", daw, "-q"), "outside the project folder")
    assert _tree(outside) == ["keep.txt"] and _tree(project) == before  # nothing written anywhere


def test_reaper_record_path_through_a_link_out_is_not_followed(hostile: tuple[Path, Path, Path]) -> None:
    song, project, outside = hostile
    (project / "Audio").symlink_to(outside)  # RECORD_PATH names a folder inside that leads out
    (project / "song.rpp").write_text('<REAPER_PROJECT\n  RECORD_PATH "Audio" ""\n>\n')
    result = _cli(song, "--project", project, "--daw", "reaper", "-q", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"]["mix"] == "Media/dr2/take/mix.wav"  # the project's own Media
    assert _tree(outside) == ["keep.txt"]


def test_a_linked_manifest_or_rpp_is_not_read_or_written(hostile: tuple[Path, Path, Path]) -> None:
    song, project, outside = hostile
    secret = outside / "dr2studio.json"
    secret.write_text(json.dumps({"schema_version": 2, "takes": [], "secret": "elsewhere"}))
    (project / "dr2studio.json").symlink_to(secret)
    _one_line_error(_cli(song, "--project", project, "-q"), "manifest")
    assert json.loads(secret.read_text())["secret"] == "elsewhere" and not (project / "dr2").exists()
    (project / "dr2studio.json").unlink()
    (outside / "other.rpp").write_text("<REAPER_PROJECT\n  SAMPLERATE 22050 0 0\n>\n")
    (project / "linked.rpp").symlink_to(outside / "other.rpp")  # a project file from elsewhere: not read
    result = _cli(song, "--project", project, "--daw", "reaper", "-q", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sample_rate"] == 48000  # not the linked file's 22050


def test_links_inside_the_project_and_a_linked_project_root_are_fine(hostile: tuple[Path, Path, Path],
                                                                     tmp_path: Path) -> None:
    song, project, outside = hostile
    (project / "Library").mkdir()
    (project / "Samples").symlink_to("Library")  # stays inside: followed
    alias = tmp_path / "alias"
    alias.symlink_to(project)  # the user's own link to their project: resolved once, then theirs
    result = _cli(song, "--project", alias, "--daw", "ableton", "-q", "--json")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["project"] == str(project.resolve())
    assert (project / "Library" / "Imported" / "dr2" / "take" / "mix.wav").is_file()
    assert _tree(outside) == ["keep.txt"]


def test_api_export_stems_refuses_a_link_out_too(hostile: tuple[Path, Path, Path]) -> None:
    _, project, outside = hostile
    (project / "dr2").symlink_to(outside)
    with pytest.raises(ValueError, match="dr2 is a link to .*outside the project folder"):
        export_stems(_song_at(8000, 0.5), project)
    assert _tree(outside) == ["keep.txt"]


def test_write_take_rechecks_links_made_after_the_layout(hostile: tuple[Path, Path, Path]) -> None:
    from dr2studio.audio.daw import ProjectError, write_take

    _, project, outside = hostile
    layout = project_layout(project, "generic")
    (project / "dr2").symlink_to(outside)  # swapped in after the checks, before the write
    with pytest.raises(ProjectError, match="outside the project folder"):
        write_take(layout, "t", {"mix": (_song_at(8000, 0.2).audio, 8000)}, {})
    assert _tree(outside) == ["keep.txt"] and not (project / "dr2studio.json").exists()


# -- a read-only project is refused before any render (as an unprivileged user: root writes anywhere) ------

def _unprivileged() -> list[str]:
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv")
    return [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]


def _run_cli_as_user(args: list[object], home: Path) -> "subprocess.CompletedProcess[str]":
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "TORCH_HOME": str(home / "torch")}
    cmd = [*_unprivileged(), sys.executable, "-c", "from dr2studio.cli import run; run()", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=300)


@pytest.fixture
def open_tmp() -> "Iterator[Path]":
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dr2-stems-ro-"))
    folder.chmod(0o755)
    (folder / "home").mkdir(mode=0o777)
    (folder / "home").chmod(0o777)
    yield folder
    for p in folder.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("where", ["project", "takes"])
def test_cli_stems_read_only_project_fails_before_the_render(open_tmp: Path, where: str) -> None:
    song = open_tmp / "take.wav"
    write_audio(song, _song_at(8000, 0.5).audio, 8000)
    song.chmod(0o644)
    project = open_tmp / "proj"
    (project / "dr2").mkdir(parents=True)
    locked = project if where == "project" else project / "dr2"
    for folder in (project, project / "dr2"):
        folder.chmod(0o777)
    locked.chmod(0o555)
    # --separate without weights or network: had the render started, the error would be about the download
    result = _run_cli_as_user(["stems", song, "--project", project, "--separate", "-q"], open_tmp / "home")
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and f"{locked} is not writable" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert _tree(project) == ["dr2"]
