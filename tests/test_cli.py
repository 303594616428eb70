"""End-to-end CLI: generate -> extend -> infill -> stems on a tiny model directory, and the error cases."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from torchaudio.models import HDemucs

from dr2studio.audio.io import read_audio
from dr2studio.cli import main
from dr2studio.song import Song
from dr2studio.lab.testing import build_tiny_model

SR = 48000
FAST = ["--steps", "2", "--cfg", "1.5"]


def run(*args: str, ok: bool = True) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, f"{args}: {result.output}\n{result.stderr}\n{result.exception!r}"
    return result


def assert_one_line_error(result: object, *needles: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    build_tiny_model(root / "model")
    np.save(root / "style.npy", np.random.default_rng(0).standard_normal(512).astype(np.float32))
    (root / "song.lrc").write_text("[verse]\nhello world\nsing it loud\n", encoding="utf-8")
    (root / "next.lrc").write_text("[chorus]\nla la la\n", encoding="utf-8")
    (root / "empty.lrc").write_text("\n\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def session(work: Path) -> dict:
    """One producer session through the CLI; later tests check what each step wrote."""
    out: dict = {}
    model = ["--model", work / "model"]
    r = run("generate", *model, "--lyrics", work / "song.lrc", "--style-embedding", work / "style.npy",
            "--duration", "3", *FAST, "--seed", "4", "-o", work / "song.wav", "--json")
    out["generate"] = (json.loads(r.stdout), r.stderr)
    r = run("extend", work / "song.wav", *model, "--lyrics", work / "next.lrc", "--seconds", "2", *FAST,
            "--seed", "5", "--crossfade", "0.1", "-o", work / "longer.wav", "--json")
    out["extend"] = (json.loads(r.stdout), r.stderr)
    r = run("infill", work / "longer.wav", *model, "--start", "1.3", "--end", "2.7", "--lyrics", work / "next.lrc",
            *FAST, "--seed", "6", "--crossfade", "0.2", "-o", work / "fixed.wav", "--json")
    out["infill"] = (json.loads(r.stdout), r.stderr)
    return out


def test_help_has_examples() -> None:
    for command in ("generate", "extend", "infill", "stems"):
        r = run(command, "--help")
        assert "Examples:" in r.stdout and f"dr2studio {command}" in r.stdout


def test_generate(work: Path, session: dict) -> None:
    result, stderr = session["generate"]
    assert result["output"] == str((work / "song.wav").resolve())
    assert result["sidecar"] == str((work / "song.dr2.safetensors").resolve())
    assert result["duration"] == 3.0 and result["seed"] == 4 and result["frames"] == 15
    assert "model" in stderr and str(work / "model") in stderr  # says which model is used
    assert "sample" in stderr  # the progress bar
    audio, sr = read_audio(work / "song.wav")
    assert sr == SR and audio.shape == (1, 3 * SR)
    assert sf.info(str(work / "song.wav")).subtype == "PCM_24"


def test_extend_keeps_samples_before_splice(work: Path, session: dict) -> None:
    result, _ = session["extend"]
    song, _ = read_audio(work / "song.wav")
    longer, _ = read_audio(work / "longer.wav")
    splice = round(result["splice"] * SR)
    assert splice == 3 * SR - round(0.1 * SR)  # crossfade ends at the block boundary (end of the song)
    assert longer.shape == (1, 5 * SR) and result["duration"] == 5.0
    assert torch.equal(longer[:, :splice], song[:, :splice])
    assert result["latents_from"]["method"] == "sidecar" and result["added_frames"] == 10


def test_infill_keeps_outside_samples_and_length(work: Path, session: dict) -> None:
    result, _ = session["infill"]
    longer, _ = read_audio(work / "longer.wav")
    fixed, _ = read_audio(work / "fixed.wav")
    assert fixed.shape == longer.shape
    a, b = round((1.3 - 0.2) * SR), round((2.7 + 0.2) * SR)
    assert torch.equal(fixed[:, :a], longer[:, :a]) and torch.equal(fixed[:, b:], longer[:, b:])
    assert not torch.equal(fixed[:, a:b], longer[:, a:b])
    assert (result["start"], result["end"]) == (1.3, 2.7)


def test_stems_into_projects(work: Path, session: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from dr2studio.audio import stems as stems_mod

    def offline_separator(weights=None, device=None):  # the download is what cannot run here
        torch.manual_seed(0)
        model = HDemucs(sources=["drums", "bass", "other", "vocals"], channels=4, growth=2, nfft=4096, depth=6)
        return stems_mod.Separator(model, segment_s=6.0, overlap_s=0.5)  # one segment: chunking is unit-tested

    monkeypatch.setattr(stems_mod, "load_separator", offline_separator)
    live = work / "Live Project"
    r = run("stems", work / "fixed.wav", "--project", live, "--daw", "ableton", "--separate",
            "--sample-rate", "44100", "--position", "16", "--json")
    entry = json.loads(r.stdout)
    take_dir = live / "Samples" / "Imported" / "dr2" / "fixed"
    assert sorted(p.name for p in take_dir.iterdir()) == ["bass.wav", "drums.wav", "mix.wav", "other.wav", "vocals.wav"]
    for wav in take_dir.iterdir():
        info = sf.info(str(wav))
        assert info.samplerate == 44100 and info.subtype == "PCM_24" and info.frames == 5 * 44100
    manifest = json.loads((live / "dr2studio.json").read_text())
    (take,) = manifest["takes"]
    assert manifest["daw"] == "ableton" and take["take"] == entry["take"] == "fixed"
    assert take["position_seconds"] == 16.0 and take["seed"] == 4
    assert "la la la" in take["lyrics"] and "hello world" in take["lyrics"]
    assert [e["kind"] for e in take["settings"]["edits"]] == ["extend", "infill"]
    assert take["files"]["mix"] == "Samples/Imported/dr2/fixed/mix.wav"
    assert abs(take["stems"]["mix"]["loudness_lufs"] - (-14.0)) < 0.1

    reaper = work / "reaper"
    reaper.mkdir()
    (reaper / "song.RPP").write_text('<REAPER_PROJECT 0.1 "7.0"\n  RECORD_PATH "Audio" ""\n>\n')
    run("stems", work / "song.wav", "--project", reaper, "--daw", "reaper", "--preset", "clean", "-q")
    run("stems", work / "song.wav", "--project", reaper, "--daw", "reaper", "--preset", "loud", "-q")
    assert (reaper / "Audio" / "dr2" / "song" / "mix.wav").is_file()
    assert (reaper / "Audio" / "dr2" / "song-2" / "mix.wav").is_file()
    takes = json.loads((reaper / "dr2studio.json").read_text())["takes"]
    assert [t["preset"] for t in takes] == ["clean", "loud"]

    generic = work / "generic"
    run("stems", work / "longer.wav", "--project", generic, "-q")
    assert (generic / "dr2" / "longer" / "mix.wav").is_file()


# -- errors: one line, non-zero exit, nothing written ---------------------------------------------------

def test_generate_errors(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["generate", "--model", work / "model", "--style-embedding", work / "style.npy", *FAST]
    out = work / "err.wav"
    cases = [
        (["--lyrics", work / "missing.lrc", "--duration", "2"], "lyrics file not found"),
        (["--lyrics", work / "empty.lrc", "--duration", "2"], "empty"),
        (["--lyrics", work / "song.lrc", "--duration", "-4"], "--duration"),
        (["--lyrics", work / "song.lrc", "--duration", "100000"], "--duration"),
    ]
    for extra, needle in cases:
        assert_one_line_error(run(*base, *extra, "-o", out, ok=False), needle)
    assert_one_line_error(run(*base, "--lyrics", work / "song.lrc", "--duration", "2", "-o", work / "no" / "x.wav",
                              ok=False), "does not exist")
    r = run("generate", "--model", work / "model", "--lyrics", work / "song.lrc", "--duration", "2", "-o", out, ok=False)
    assert r.exit_code == 2 and "give a style" in r.stderr
    # a text style prompt needs MuQ-MuLan (not installed here) or a model style encoder
    r = run("generate", "--model", work / "model", "--lyrics", work / "song.lrc", "--style", "dreamy synth pop",
            "--duration", "2", *FAST, "-o", out, ok=False)
    assert_one_line_error(r, "MuQ")
    monkeypatch.delenv("DR2STUDIO_MODEL", raising=False)
    monkeypatch.setattr("dr2studio.commands._studio_cli.DEMO_MODEL", work / "no-demo")
    r = run("generate", "--lyrics", work / "song.lrc", "--style-embedding", work / "style.npy", "--duration", "2",
            "-o", out, ok=False)
    assert_one_line_error(r, "no --model given")
    r = run(*base, "--lyrics", work / "song.lrc", "--duration", "2", "-o", out, "--model", work / "nowhere", ok=False)
    assert_one_line_error(r, "not found")
    assert not out.exists() and not (work / "err.dr2.safetensors").exists()


def test_edit_errors_leave_outputs_untouched(work: Path, session: dict) -> None:
    model = ["--model", work / "model"]
    target = work / "keep.wav"
    target.write_bytes((work / "song.wav").read_bytes())
    before = target.read_bytes()
    cases = [
        (["extend", work / "missing.wav", "--lyrics", work / "next.lrc"], "not found"),
        (["extend", work / "song.lrc", "--lyrics", work / "next.lrc"], "cannot read audio"),
        (["extend", work / "song.wav", "--lyrics", work / "empty.lrc"], "empty"),
        (["extend", work / "song.wav", "--lyrics", work / "next.lrc", "--seconds", "-1"], "--seconds"),
        (["infill", work / "song.wav", "--start", "2", "--end", "1", "--lyrics", work / "next.lrc"], "before end"),
        (["infill", work / "song.wav", "--start", "1", "--end", "1", "--lyrics", work / "next.lrc"], "before end"),
        (["infill", work / "song.wav", "--start", "1", "--end", "99", "--lyrics", work / "next.lrc"], "past the end"),
        (["infill", work / "song.wav", "--start", "-1", "--end", "1", "--lyrics", work / "next.lrc"], "start must be"),
    ]
    for args, needle in cases:
        assert_one_line_error(run(*args, *model, *FAST, "-o", target, ok=False), needle)
    assert target.read_bytes() == before
    # an audio file without sidecar needs a style
    plain = work / "plain.wav"
    sf.write(plain, np.zeros(SR, dtype=np.float32), SR)
    assert_one_line_error(run("extend", plain, "--lyrics", work / "next.lrc", *model, "-o", target, ok=False),
                          "no sidecar", "--style")
    assert target.read_bytes() == before


def test_infill_bars(work: Path, session: dict) -> None:
    out = work / "bars.wav"
    r = run("infill", work / "longer.wav", "--model", work / "model", "--start-bar", "2", "--end-bar", "3", "--bpm",
            "240", "--lyrics", work / "next.lrc", *FAST, "--seed", "1", "-o", out, "--json", "-q")
    result = json.loads(r.stdout)
    assert (result["start"], result["end"]) == (1.0, 2.0)  # bar 2 at 240 bpm in 4/4 starts at 1 s
    assert r.stderr == ""  # --quiet
    r = run("infill", work / "longer.wav", "--model", work / "model", "--start-bar", "2", "--end-bar", "3",
            "--lyrics", work / "next.lrc", "-o", work / "x.wav", ok=False)
    assert r.exit_code == 2 and "--bpm" in r.stderr


def test_stems_errors(work: Path, session: dict) -> None:
    afile = work / "project.txt"
    afile.write_text("not a folder")
    assert_one_line_error(run("stems", work / "song.wav", "--project", afile, ok=False), "is a file")
    assert_one_line_error(run("stems", work / "song.wav", "--project", work / "p1", "--preset", "nope", ok=False),
                          "unknown preset")
    assert_one_line_error(run("stems", work / "gone.wav", "--project", work / "p2", ok=False), "not found")
    broken = work / "p3"
    broken.mkdir()
    (broken / "dr2studio.json").write_text("{")
    assert_one_line_error(run("stems", work / "song.wav", "--project", broken, ok=False), "manifest")
    assert not (work / "p1").exists() and not (work / "p2").exists()
    assert sorted(p.name for p in broken.iterdir()) == ["dr2studio.json"]


@pytest.mark.slow
def test_generate_with_reference_checkpoint(tiny_ref_dir: Path, work: Path) -> None:
    out = work / "ref.wav"
    r = run("generate", "--model", tiny_ref_dir, "--lyrics", work / "song.lrc", "--style-embedding",
            work / "style.npy", "--duration", "1", *FAST, "--stereo", "-o", out, "--json", "-q")
    assert json.loads(r.stdout)["channels"] == 2
    audio, sr = read_audio(out)
    assert sr == SR and audio.shape == (2, SR)


def test_readme_main_job_with_demo_model(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's main-job command (no --model, a text style) on a demo model that has a tag style encoder."""
    demo = build_tiny_model(tmp_path / "demo", style_encoder=True)
    monkeypatch.delenv("DR2STUDIO_MODEL", raising=False)
    monkeypatch.setattr("dr2studio.commands._studio_cli.DEMO_MODEL", demo)
    lrc = Path(__file__).resolve().parents[1] / "examples" / "lyrics" / "demo.lrc"
    if not lrc.is_file():
        pytest.skip("examples/lyrics/demo.lrc is not in this checkout")
    out = tmp_path / "song.wav"
    r = run("generate", "--lyrics", lrc, "--style", "pop, 120 bpm, A minor, piano, drums", "--duration", "2",
            *FAST, "-o", out)
    assert "shipped demo model" in r.stderr and r.stdout.startswith(str(out))
    assert read_audio(out)[0].shape == (1, 2 * SR)
    # the style text's tempo reaches the model (a tempo clock needs it) and is kept for later edits
    assert Song.load(out).settings["tempo_bpm"] == 120.0
    longer = tmp_path / "longer.wav"
    run("extend", out, "--lyrics", lrc, "--seconds", "1", "--style", "pop, 90 bpm", *FAST, "-o", longer)
    assert Song.load(longer).settings["tempo_bpm"] == 90.0


def test_extend_without_sidecar_says_how_it_encodes(work: Path, session: dict) -> None:
    plain = work / "plain-take.wav"
    audio, _ = read_audio(work / "song.wav")
    sf.write(plain, audio[0].numpy(), SR, subtype="PCM_24")  # the audio alone, as a DAW would bounce it
    out = work / "plain-longer.wav"
    r = run("extend", plain, "--model", work / "model", "--lyrics", work / "next.lrc", "--seconds", "1",
            "--style-embedding", work / "style.npy", "--inversion-steps", "2", *FAST, "-o", out, "--json")
    assert "decoder inversion" in r.stderr
    result = json.loads(r.stdout)
    assert result["latents_from"]["method"] == "inversion"
    longer, _ = read_audio(out)
    splice = round(result["splice"] * SR)
    assert torch.equal(longer[:, :splice], audio[:, :splice])


# -- issue 18: a read-only output folder and a folder given as lyrics, named up front -----------------------

def test_lyrics_path_that_is_a_folder_is_named_as_such(work: Path) -> None:
    folder = work / "lyrics-folder.lrc"
    folder.mkdir(exist_ok=True)
    out = work / "from-folder.wav"
    base = ["--model", work / "model", "--style-embedding", work / "style.npy", *FAST, "-o", out]
    assert_one_line_error(run("generate", "--lyrics", folder, "--duration", "2", *base, ok=False),
                          f"{folder} is a folder, not a lyrics file")
    assert_one_line_error(run("extend", work / "song.lrc", "--lyrics", folder, *base, ok=False), "cannot read audio")
    plain = work / "for-lyrics-folder.wav"
    sf.write(plain, np.zeros(SR, dtype=np.float32), SR)
    assert_one_line_error(run("extend", plain, "--lyrics", folder, *base, ok=False),
                          "is a folder, not a lyrics file")
    assert_one_line_error(run("infill", plain, "--start", "0.2", "--end", "0.5", "--lyrics", folder, *base, ok=False),
                          "is a folder, not a lyrics file")
    assert not out.exists()


def _unprivileged() -> list[str]:
    """Run as ``nobody`` under root (root writes into read-only folders); as is otherwise."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv")
    return [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def readonly_out() -> "Iterator[Path]":
    """An open folder holding lyrics, a style, a song, and a read-only ``out`` folder."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dr2-cli-ro-"))
    folder.chmod(0o755)
    (folder / "song.lrc").write_text("[verse]\nhello world\n", encoding="utf-8")
    np.save(folder / "style.npy", np.random.default_rng(0).standard_normal(512).astype(np.float32))
    sf.write(folder / "song.wav", np.zeros(SR, dtype=np.float32), SR)
    (folder / "home").mkdir(mode=0o777)
    (folder / "home").chmod(0o777)
    (folder / "out").mkdir()
    (folder / "out").chmod(0o555)
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(0o644)
    yield folder
    (folder / "out").chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("command", ["generate", "extend", "infill"])
def test_read_only_output_folder_fails_before_the_model_loads(readonly_out: Path, command: str) -> None:
    import os
    import subprocess
    import sys

    d = readonly_out
    lead = {"generate": ["generate", "--duration", "2"], "extend": ["extend", d / "song.wav"],
            "infill": ["infill", d / "song.wav", "--start", "0.2", "--end", "0.5"]}[command]
    # a model folder that does not exist: had the model been loaded first, the error would be about it
    args = [*lead, "--model", d / "no-model", "--lyrics", d / "song.lrc", "--style-embedding", d / "style.npy",
            *FAST, "-o", d / "out" / "take.wav"]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HOME": str(d / "home"), "XDG_CACHE_HOME": str(d / "home" / "c")}
    cmd = [*_unprivileged(), sys.executable, "-c", "from dr2studio.cli import run; run()", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    assert f"output folder {d / 'out'} is not writable: it is read-only" in errors[0], errors[0]
    assert "loading model" not in result.stderr and "Traceback" not in result.stderr and result.stdout == ""
    assert list((d / "out").iterdir()) == []
