"""The take browser: a local web page over a project's takes (``dr2studio ui``, ``dr2studio bridge --ui-port``).

See each take's waveform, spectrogram, sections and the model's blocks on a time/bar ruler, its lyrics,
seed, settings, edit history and stems; play, loop and A/B takes; rate them (the rating store the OSC,
MIDI and CLI doors share) beside their automatic scores; and extend, regenerate a section or sample a
take again with a new seed on the bridge's engine, with live progress and the audio as it is sampled.
docs/ui.md describes the page and its HTTP API. Needs the ``ui`` extra (starlette, uvicorn).
"""
from __future__ import annotations

from dr2studio.ui.project import ProjectView, UiError
from dr2studio.ui.server import DEFAULT_UI_PORT, UiServer

__all__ = ["UiServer", "ProjectView", "UiError", "DEFAULT_UI_PORT"]
