"""Does the installed stack load? One line that names the fix when it does not.

A fresh install can pick a torch/torchaudio pair that does not load together (torchaudio's compiled
ops are built against one exact torch release), or miss a package an extra should have brought.
Python then prints a chained double traceback that tells a producer nothing. ``scripts/setup.sh``
ends with ``python -m dr2studio.stack_check``; the CLI turns such a failure at run time into the same
one line (:func:`explain_import_failure`).

The pins come from the installed package's own metadata (``pyproject.toml`` is their one home).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as metadata
import re
import shutil
import sys
import traceback
from collections.abc import Iterable
from types import TracebackType

__all__ = ["StackProblem", "check_stack", "explain_import_failure", "pinned_versions", "main"]

SETUP_HINT = "bash scripts/setup.sh"
LOCK_FILE = "requirements/constraints.txt"

#: (import name, distribution, what needs it). Checked in this order: torch first, as all else needs it.
STACK: tuple[tuple[str, str, str], ...] = (
    ("torch", "torch", "the models"),
    ("torchaudio.functional", "torchaudio", "resampling, loudness, separation"),
    ("numpy", "numpy", "arrays"),
    ("einops", "einops", "reshapes"),
    ("safetensors.torch", "safetensors", "weight files"),
    ("soundfile", "soundfile", "audio file I/O"),
    ("pedalboard", "pedalboard", "stem effects"),
    ("click", "click", "the command line"),
    ("tqdm", "tqdm", "progress bars"),
    ("phonemizer", "phonemizer", "English lyrics (extra g2p)"),
    ("jieba", "jieba", "Mandarin lyrics (extra g2p)"),
    ("pypinyin", "pypinyin", "Mandarin lyrics (extra g2p)"),
    ("onnxruntime", "onnxruntime", "Mandarin polyphones (extra g2p)"),
    ("ray.train", "ray", "training (extra ray)"),
    ("ray.serve", "ray", "serving (extra ray)"),
    ("fastapi", "fastapi", "serving (extra ray)"),
    ("pythonosc", "python-osc", "the OSC bridge (extra bridge)"),
    ("mido", "mido", "MIDI (extra bridge)"),
    ("charset_normalizer", "charset-normalizer", "MIDI lyric encodings (extra bridge)"),
    ("huggingface_hub", "huggingface_hub", "released weights (extra hub)"),
)


@dataclasses.dataclass(frozen=True)
class StackProblem:
    """One package that does not import, with the one line that says how to fix it."""

    module: str
    purpose: str
    error: str
    fix: str

    def line(self) -> str:
        return f"{self.module} ({self.purpose}) does not load: {self.error}; fix: {self.fix}"


def pinned_versions() -> dict[str, str]:
    """``{"torch": "2.11.0", ...}``: the exact ``==`` pins dr2studio's metadata declares."""
    pins: dict[str, str] = {}
    try:
        requires = metadata.requires("dr2studio") or []
    except metadata.PackageNotFoundError:
        return pins
    for req in requires:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*(;.*)?$", req)
        if m and not (m.group(3) and "extra" in m.group(3)):
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _fix_for(dist: str) -> str:
    pins = pinned_versions()
    if dist in ("torch", "torchaudio"):
        pair = f"torch=={pins.get('torch', '?')} torchaudio=={pins.get('torchaudio', '?')}"
        have = f"installed: torch {_installed('torch') or 'none'}, torchaudio {_installed('torchaudio') or 'none'}"
        return f"{have}; dr2studio needs exactly {pair}: run `{SETUP_HINT}` or `pip install -c {LOCK_FILE} {pair}`"
    return f"run `{SETUP_HINT}` (or `pip install -c {LOCK_FILE} {dist}`)"


def check_stack(modules: Iterable[tuple[str, str, str]] = STACK) -> list[StackProblem]:
    """Import each module of the stack; the problems found (empty when everything loads)."""
    problems: list[StackProblem] = []
    for module, dist, purpose in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure to import is what we report
            problems.append(StackProblem(module, purpose, _first_line(exc), _fix_for(dist)))
    if not problems:
        try:  # torchaudio loads its compiled ops lazily: make one call that needs them
            import torch
            import torchaudio.functional as AF

            AF.resample(torch.zeros(1, 160), 16000, 8000)
        except Exception as exc:  # noqa: BLE001
            problems.append(StackProblem("torchaudio", "resampling", _first_line(exc), _fix_for("torchaudio")))
    return problems


def _frames(exc: BaseException) -> list[str]:
    seen: set[int] = set()
    files: list[str] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb: TracebackType | None = current.__traceback__
        files.extend(frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb))
        current = current.__cause__ or current.__context__
    return files


def explain_import_failure(exc: BaseException) -> str | None:
    """One line for an import failure inside torch/torchaudio (or a missing dependency), else None."""
    if not isinstance(exc, (ImportError, OSError, RuntimeError, AttributeError)):
        return None
    files = _frames(exc)
    for dist in ("torchaudio", "torch"):
        marker = f"{dist}/"
        if any(f"site-packages/{marker}" in f or f"dist-packages/{marker}" in f for f in files):
            return f"dr2studio: {dist} does not load ({_first_line(exc)}); {_fix_for(dist)}"
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("dr2studio"):
        top = exc.name.split(".")[0]
        dist = next((d for m, d, _ in STACK if m.split(".")[0] == top), top)
        return f"dr2studio: the package {dist!r} is not installed; {_fix_for(dist)}"
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m dr2studio.stack_check``: exit 0 when the whole stack loads, else one line per problem."""
    problems = check_stack()
    if shutil.which("espeak-ng") is None and shutil.which("espeak") is None:
        problems.append(StackProblem("espeak-ng", "English lyrics", "not on PATH", "apt-get install espeak-ng"))
    for problem in problems:
        sys.stderr.write(f"stack check: {problem.line()}\n")
    if problems:
        return 1
    pins = pinned_versions()
    sys.stdout.write(
        f"stack check: ok (python {sys.version.split()[0]}, torch {_installed('torch')}, torchaudio "
        f"{_installed('torchaudio')}, ray {_installed('ray')}; pins {', '.join(f'{k}=={v}' for k, v in pins.items())})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
