"""Audio to MIDI: basic-pitch's ONNX model, run through onnxruntime, one ``.mid`` per stem.

basic-pitch (Spotify, Apache-2.0) ships its weights inside its package, so nothing is downloaded. We
use only its ONNX model file and its note post-processing (:mod:`basic_pitch.note_creation`); the
package is imported with TensorFlow blocked, so TensorFlow is never imported even where it is
installed, and it is not a dependency. Install with ``pip install 'dr2studio[midi]'`` and
``pip install --no-deps basic-pitch==0.4.0`` (its declared dependencies pull TensorFlow in on Linux;
``scripts/setup.sh`` does both).

Audio is mixed to mono and resampled to the model's 22.05 kHz in memory (no temporary file), run in
the model's 2 s windows and turned into notes; :func:`notes_to_midi` writes them as a Standard MIDI
File whose tempo is the project's, so a DAW that reads the file at the project tempo places every
note at the second it was heard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dr2studio.requests import TEMPO

__all__ = [
    "TranscriptionError",
    "Note",
    "MIDI_STEMS",
    "STEM_RANGES",
    "midi_stems",
    "transcribe",
    "notes_to_midi",
    "transcribe_stems",
]

log = logging.getLogger(__name__)

#: The stems that get a ``.mid`` when the take is separated (drums are not pitched).
MIDI_STEMS = ("vocals", "bass", "other")
#: Frequency range (Hz) of the notes kept per stem: a bass line, a sung line, anything else.
STEM_RANGES: dict[str, tuple[float | None, float | None]] = {
    "bass": (30.0, 400.0),
    "vocals": (80.0, 1200.0),
    "other": (None, None),
    "mix": (None, None),
}
#: General MIDI program per stem (0-based): finger bass, choir aahs, piano.
_PROGRAMS = {"bass": 33, "vocals": 52, "other": 0, "mix": 0}
_MODEL: Any = None
_MODEL_LOCK = threading.Lock()


class TranscriptionError(ValueError):
    """The transcription model could not be loaded or run, or the audio cannot be transcribed."""


@dataclasses.dataclass(frozen=True)
class Note:
    """One transcribed note: start and end (seconds), MIDI pitch and velocity (1..127)."""

    start: float
    end: float
    pitch: int
    velocity: int


def midi_stems(stems: list[str] | tuple[str, ...]) -> list[str]:
    """The stems of a take that get MIDI: vocals, bass and other when separated, else the mix."""
    chosen = [s for s in MIDI_STEMS if s in stems]
    return chosen or (["mix"] if "mix" in stems else [])


@contextlib.contextmanager
def _tensorflow_blocked() -> Iterator[None]:
    """``import tensorflow`` fails inside (basic-pitch tries it first); its 'not installed' warnings are muted."""
    blocked = "tensorflow" not in sys.modules
    if blocked:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes the import raise ImportError
    root = logging.getLogger()
    quiet = logging.Filter("dr2studio.never")  # drops every record logged on the root logger meanwhile
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        if blocked and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]


def _model() -> Any:
    """basic-pitch's ICASSP 2022 model as an onnxruntime session, loaded once per process."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            try:
                with _tensorflow_blocked():
                    import basic_pitch
                    from basic_pitch.inference import Model
            except ImportError as exc:
                raise TranscriptionError(
                    "audio to MIDI needs basic-pitch 0.4 and onnxruntime: pip install onnxruntime && "
                    f"pip install --no-deps basic-pitch==0.4.0 ({exc})") from exc
            path = Path(basic_pitch.build_icassp_2022_model_path(basic_pitch.FilenameSuffix.onnx))
            if not path.is_file():
                raise TranscriptionError(f"basic-pitch's ONNX model is missing at {path}; reinstall basic-pitch")
            try:
                with _tensorflow_blocked():
                    model = Model(path)
            except ValueError as exc:
                raise TranscriptionError(f"cannot load basic-pitch's ONNX model {path}: {exc}") from exc
            if model.model_type != Model.MODEL_TYPES.ONNX:
                raise TranscriptionError(f"basic-pitch loaded {path} as {model.model_type.name}, not ONNX")
            _MODEL = model
        return _MODEL


def _mono_22k(audio: torch.Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
    from basic_pitch.constants import AUDIO_SAMPLE_RATE

    from dr2studio.audio.io import resample

    x = torch.as_tensor(audio).detach().float().cpu()
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[-1] == 0:
        raise TranscriptionError(f"audio must be [n] or [channels, n] with samples, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise TranscriptionError("audio holds NaN or infinite samples")
    return resample(x.mean(0, keepdim=True), int(sample_rate), AUDIO_SAMPLE_RATE)[0].numpy().astype(np.float32)


def transcribe(audio: torch.Tensor | np.ndarray, sample_rate: int, *, stem: str = "mix",
               onset_threshold: float = 0.5, frame_threshold: float = 0.3,
               min_note_seconds: float = 0.08) -> list[Note]:
    """Notes of ``audio`` (``[n]`` or ``[C, n]`` at ``sample_rate``), in the frequency range of ``stem``."""
    model = _model()
    from basic_pitch import note_creation
    from basic_pitch.constants import AUDIO_N_SAMPLES, AUDIO_SAMPLE_RATE, FFT_HOP
    from basic_pitch.inference import unwrap_output, window_audio_file

    x = _mono_22k(audio, sample_rate)
    if float(np.abs(x).max()) < 1e-6:
        return []  # silence: no notes (basic-pitch's onset rescaling would divide by zero)
    overlap_frames = 30  # the windowing basic-pitch's own runner uses
    overlap = overlap_frames * FFT_HOP
    padded = np.concatenate([np.zeros(overlap // 2, np.float32), x])
    out: dict[str, list[np.ndarray]] = {"note": [], "onset": [], "contour": []}
    try:
        for window, _ in window_audio_file(padded, AUDIO_N_SAMPLES - overlap):
            for key, value in model.predict(window[None]).items():
                out[key].append(value)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise TranscriptionError(f"the transcription model failed on stem {stem}: {exc}") from exc
    output = {k: unwrap_output(np.concatenate(v), len(x), overlap_frames) for k, v in out.items()}
    low, high = STEM_RANGES.get(stem, (None, None))
    _, events = note_creation.model_output_to_notes(
        output, onset_thresh=onset_threshold, frame_thresh=frame_threshold,
        min_note_len=max(1, int(round(min_note_seconds * AUDIO_SAMPLE_RATE / FFT_HOP))),
        min_freq=low, max_freq=high, include_pitch_bends=False, melodia_trick=True)
    notes = [Note(float(s), float(e), int(p), int(np.clip(round(127 * a), 1, 127))) for s, e, p, a, _ in events]
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def notes_to_midi(notes: list[Note], *, bpm: float, timesig: tuple[int, int] = (4, 4), stem: str = "mix") -> bytes:
    """A Standard MIDI File (type 1, 480 ticks per beat) of ``notes`` at the project tempo ``bpm``."""
    try:
        import pretty_midi
    except ImportError as exc:
        raise TranscriptionError("writing MIDI needs pretty_midi: pip install 'dr2studio[midi]'") from exc

    bpm = float(TEMPO.check(bpm, "bpm"))
    num, den = int(timesig[0]), int(timesig[1])
    midi = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=bpm)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
    track = pretty_midi.Instrument(program=_PROGRAMS.get(stem, 0), name=f"dr2 {stem}")
    for n in notes:
        if n.end > n.start:
            track.notes.append(pretty_midi.Note(velocity=n.velocity, pitch=n.pitch, start=n.start, end=n.end))
    midi.instruments.append(track)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


def transcribe_stems(stems: Mapping[str, tuple[torch.Tensor, int]], *, bpm: float,
                     timesig: tuple[int, int] = (4, 4)) -> dict[str, bytes]:
    """``{stem: .mid bytes}`` for the stems :func:`midi_stems` picks from ``{stem: (audio, rate)}``.

    Everything is in memory: the caller writes the files with the take (nothing half-written).
    """
    out: dict[str, bytes] = {}
    for name in midi_stems(list(stems)):
        audio, rate = stems[name]
        notes = transcribe(audio, rate, stem=name)
        log.info("stem %s: %d notes transcribed", name, len(notes))
        out[name] = notes_to_midi(notes, bpm=bpm, timesig=timesig, stem=name)
    return out
