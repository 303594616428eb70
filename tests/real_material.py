"""Real material for tests: recordings, lyrics and MIDI files that nobody on this project made.

- ``shared_real(name)``: the DiffRhythm 2 authors' example files in ``../shared/real`` (``2.wav``: 19.6 s,
  44.1 kHz, 16-bit stereo; ``1.lrc``: Mandarin lyrics), read in place; the test skips where absent.
- ``midi_corpus()``: the real MIDI files that ship inside music21's package (its test corpus: Bach
  chorales, folk tunes, files with time-signature changes, tempo maps, lyric and marker events).
- ``render_midi(path, out, rate)``: a General MIDI rendering of a real MIDI file with FluidSynth and the
  FluidR3 GM soundfont (Debian's ``fluidsynth`` and ``fluid-soundfont-gm``, installed by ``scripts/setup.sh``),
  stereo at ``rate`` Hz: an orchestral recording at 48 kHz that we did not compose.

Everything here skips the calling test with a clear reason where the material or the tool is absent.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DR2STUDIO_SHARED", REPO.parent / "shared"))
SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    Path("/usr/share/sounds/sf3/default-GM.sf3"),
)


def shared_real(name: str) -> Path:
    """A file of ``../shared/real`` (the authors' example recording ``2.wav`` and lyrics ``1.lrc``)."""
    path = SHARED / "real" / name
    if not path.is_file():
        pytest.skip(f"real material {path} is absent (it ships only with the development checkout's ../shared)")
    return path


def midi_corpus() -> list[Path]:
    """Every ``.mid``/``.midi`` file inside the installed music21 package (its real test corpus)."""
    try:
        import music21
    except ImportError:
        pytest.skip("music21 (dev extra) is not installed: it carries the real MIDI corpus")
    root = Path(music21.__file__).parent
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    if not files:
        pytest.skip(f"no MIDI files found under {root}")
    return files


def soundfont() -> Path:
    for path in SOUNDFONTS:
        if path.is_file():
            return path
    pytest.skip("no General MIDI soundfont (apt-get install fluid-soundfont-gm; scripts/setup.sh does)")


def render_midi(midi: Path, out: Path, rate: int = 48000, seconds: float | None = None) -> Path:
    """Render ``midi`` to a stereo 16-bit WAV at ``rate`` Hz with FluidSynth (optionally cut to ``seconds``)."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        pytest.skip("fluidsynth is not installed (apt-get install fluidsynth; scripts/setup.sh does)")
    sf2 = soundfont()
    subprocess.run(
        [exe, "-ni", "-q", "-g", "0.6", "-r", str(rate), "-F", str(out), "-T", "wav", "-O", "s16", str(sf2), str(midi)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    if seconds is not None:
        import soundfile as sf

        data, sr = sf.read(out, dtype="int16", always_2d=True)
        sf.write(out, data[: int(seconds * sr)], sr, subtype="PCM_16")
    return out
