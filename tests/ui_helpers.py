"""A real project for the take-browser tests: takes sampled by the shipped demo model, rendered by ``export_stems``.

Each song is saved with its sidecar inside the project (``songs/``), so the page's actions continue it
from its exact latents, as they do for the page's own takes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_LYRICS = REPO / "examples" / "lyrics" / "demo.lrc"
DEMO_STYLE = "pop, 120 bpm, A minor, piano, drums"


def demo_project(folder: Path, studio: Any, *, takes: int = 3, seconds: float = 2.0, steps: int = 2) -> list[str]:
    """Render ``takes`` songs of ``seconds`` into the generic project ``folder``; returns the take names."""
    from dr2studio.audio.stems import export_stems
    from dr2studio.song import Song

    folder.mkdir(parents=True, exist_ok=True)
    songs = folder / "songs"
    songs.mkdir(exist_ok=True)
    names = []
    for i in range(takes):
        song = studio.generate(str(DEMO_LYRICS), DEMO_STYLE, duration=seconds, seed=11 + i, steps=steps)
        path = song.save(songs / f"take{i + 1}.wav")
        entry = export_stems(Song.load(path), folder, take=f"take{i + 1}", preset="clean")
        names.append(entry["take"])
    return names
