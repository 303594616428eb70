"""Song requests: the one home of every limit and default the front doors share.

A request reaches the sampler through four doors: the CLI, the Python :class:`~dr2studio.studio.Studio`,
the engine / Ray Serve wire format and the OSC/MIDI bridge. Each door builds one of the typed requests
below and calls :meth:`validate`; the limits live only here, so the same bad value gets the same
message through every door (``steps must be an integer in [2, 1000], got 1``), at entry, before any
model is loaded or any file is written.

- :class:`Limit`: one named range (steps, guidance, seconds, tempo, ...). Doors that parse text (click
  options, OSC arguments) call :meth:`Limit.check` on the parsed value.
- :class:`GenerateRequest`, :class:`ExtendRequest`, :class:`InfillRequest`: what to render, with
  :class:`SamplingRequest` (steps, guidance, seed) inside. They round-trip to JSON
  (:class:`~dr2studio.config.JsonConfig`), which is how the engine ships them to a Serve replica.

Conditions that need a model (lyric tokens, the style vector) are resolved later by the Studio; a
request holds only what the user said.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

from dr2studio.config import JsonConfig

__all__ = [
    "RequestError",
    "Limit",
    "STEPS",
    "CFG_STRENGTH",
    "SEED",
    "DURATION",
    "EXTEND_SECONDS",
    "TIME",
    "CROSSFADE",
    "TEMPO",
    "INVERSION_STEPS",
    "PLACE_TIMEOUT",
    "STARS",
    "MAX_SECONDS",
    "MAX_LYRICS_CHARS",
    "MAX_LYRICS_BYTES",
    "MAX_LYRIC_TOKENS",
    "MAX_BODY_BYTES",
    "MAX_SONG_BYTES",
    "MAX_SONG_MEMBERS",
    "PlainText",
    "DAWS",
    "DEFAULT_STEPS",
    "DEFAULT_CFG_STRENGTH",
    "DEFAULT_EXTEND_SECONDS",
    "DEFAULT_CROSSFADE",
    "check_daw",
    "SamplingRequest",
    "GenerateRequest",
    "ExtendRequest",
    "InfillRequest",
    "TakeRequest",
]

#: The longest song, continuation or edit span a request may ask for (seconds).
MAX_SECONDS = 600.0
#: The most lyric text one request may carry (characters): far beyond any song, far below a memory risk.
MAX_LYRICS_CHARS = 64 * 1024
#: The largest lyrics file read (bytes), checked on its size before reading: MAX_LYRICS_CHARS characters
#: at up to 4 bytes each (UTF-8 or UTF-16) plus a byte-order mark.
MAX_LYRICS_BYTES = 4 * MAX_LYRICS_CHARS + 4
#: The most lyric tokens (phones, tags and line stops) one song's lyrics may encode to. Numbers expand
#: ("1,000,000" is sung as three words), so 64 K characters could give far more; a 10-minute song has
#: a few thousand, and the DiT attends over all of them in every block.
MAX_LYRIC_TOKENS = 16 * 1024
#: The DAW project layouts the stems and the bridge know.
DAWS: tuple[str, ...] = ("ableton", "reaper", "generic")
#: Serve: the largest request body (bytes), refused on its Content-Length and while it streams in.
#: A 600 s stereo float32 song archive is ~231 MB, ~308 MB as base64.
MAX_BODY_BYTES = 512 * 1024 * 1024
#: Serve: the most bytes a song archive may inflate to (all members together), checked against the
#: declared sizes and again while each member is extracted: no bigger than a stored archive that fits the body.
MAX_SONG_BYTES = MAX_BODY_BYTES * 3 // 4
#: Serve: the most members a song archive may hold (it has two: song.wav and its sidecar).
MAX_SONG_MEMBERS = 8


class PlainText(str):
    """Text that is data only: a lyric or style prompt from a network door (Serve). The Studio never reads
    it as a file path, so a request cannot name a server file (``/etc/x.lrc``, ``style.npy``) or learn
    whether one exists."""

    __slots__ = ()

DEFAULT_STEPS = 32
DEFAULT_CFG_STRENGTH = 2.0
DEFAULT_EXTEND_SECONDS = 30.0
DEFAULT_CROSSFADE = 0.25


class RequestError(ValueError):
    """A request value of the wrong type or out of range. ``field`` names it; ``code`` is for wire replies."""

    code = "bad_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Limit:
    """A named numeric range: ``low``..``high``, optionally open at ``low``, integers only when ``integer``."""

    name: str
    low: float
    high: float
    low_open: bool = False
    integer: bool = False
    unit: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        left = "(" if self.low_open else "["
        unit = f" {self.unit}" if self.unit else ""
        low, high = (f"{int(self.low)}", f"{int(self.high)}") if self.integer else (f"{self.low:g}", f"{self.high:g}")
        return f"{kind} in {left}{low}, {high}]{unit}"

    def check(self, value: Any, field: str | None = None) -> Any:
        """``value`` as an int or float when it is in range, else :class:`RequestError` naming ``field``."""
        field = field or self.name
        bad = RequestError(field, f"{field} must be {self.describe()}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad
        if self.integer:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            number: float = int(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                raise bad
        too_low = number <= self.low if self.low_open else number < self.low
        if too_low or number > self.high:
            raise bad
        return number


STEPS = Limit("steps", 2, 1000, integer=True)  # grid points per block: steps - 1 Euler steps, so at least 2
CFG_STRENGTH = Limit("cfg_strength", 0.0, 50.0)
SEED = Limit("seed", 0, 2**63 - 1, integer=True)
DURATION = Limit("duration", 0.0, MAX_SECONDS, low_open=True, unit="seconds")
EXTEND_SECONDS = Limit("seconds", 0.0, MAX_SECONDS, low_open=True, unit="seconds")
TIME = Limit("time", 0.0, MAX_SECONDS, unit="seconds")
CROSSFADE = Limit("crossfade", 0.0, 2.0, unit="seconds")
TEMPO = Limit("tempo", 20.0, 999.0, unit="bpm")
INVERSION_STEPS = Limit("inversion_steps", 1, 10000, integer=True)
PLACE_TIMEOUT = Limit("place_timeout", 0.1, 120.0, unit="seconds")  # waiting for a DAW to place a take (bridge)
STARS = Limit("stars", 1, 5, integer=True)  # a producer's rating of a take (dr2studio.ratings)


def check_daw(daw: Any, field: str = "daw") -> str:
    """``daw`` when it names a known project layout (case-insensitive), else :class:`RequestError`."""
    if isinstance(daw, str) and daw.strip().lower() in DAWS:
        return daw.strip().lower()
    raise RequestError(field, f"{field} must be one of {', '.join(DAWS)}, got {daw!r}")


def _check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(field, f"{field} must be true or false, got {value!r}")
    return value


def _check_text(value: Any, field: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RequestError(field, f"{field} must be text, got {type(value).__name__}")
    if len(value) > MAX_LYRICS_CHARS:
        raise RequestError(field, f"{field} holds {len(value)} characters; the limit is {MAX_LYRICS_CHARS}")
    if required and not value.strip():
        raise RequestError(field, f"{field} is empty")
    return value


def _check_embedding(value: Any, field: str = "style_embedding") -> list[float] | None:
    if value is None:
        return None
    try:
        vector = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise RequestError(field, f"{field} must be a list of 512 numbers") from exc
    if len(vector) != 512:
        raise RequestError(field, f"{field} has {len(vector)} values, expected 512")
    if not all(math.isfinite(v) for v in vector):
        raise RequestError(field, f"{field} holds NaN or infinite values")
    return vector


@dataclasses.dataclass
class SamplingRequest(JsonConfig):
    """How to sample: grid points per block, guidance strength and the seed (None: a random one)."""

    steps: int = DEFAULT_STEPS
    cfg_strength: float = DEFAULT_CFG_STRENGTH
    seed: int | None = None

    def validate(self) -> None:
        self.steps = STEPS.check(self.steps)
        self.cfg_strength = CFG_STRENGTH.check(self.cfg_strength)
        if self.seed is not None:
            self.seed = SEED.check(self.seed)


@dataclasses.dataclass
class _SongRequest(JsonConfig):
    """What every request has: lyrics (text, or a file path where the door reads local files), a style
    (text prompt, or a file path locally) or a 512-d ``style_embedding``, the sampling, a tempo (bpm,
    for a model's tempo clock; None: the one the style text states) and ``instrumental`` (sing no line)."""

    kind: ClassVar[str] = ""

    lyrics: str = ""
    style: str | None = None
    style_embedding: list[float] | None = None
    sampling: SamplingRequest = dataclasses.field(default_factory=SamplingRequest)
    tempo: float | None = None
    instrumental: bool = False

    def validate(self) -> None:
        self.lyrics = _check_text(self.lyrics, "lyrics", required=not self.instrumental) or ""
        self.style = _check_text(self.style, "style", required=False)
        self.style_embedding = _check_embedding(self.style_embedding)
        if isinstance(self.sampling, dict):
            self.sampling = SamplingRequest.from_dict(self.sampling)
        elif isinstance(self.sampling, SamplingRequest):
            self.sampling.validate()
        else:
            raise RequestError("sampling", f"sampling must be an object, got {type(self.sampling).__name__}")
        if self.tempo is not None:
            self.tempo = TEMPO.check(self.tempo)
        self.instrumental = _check_bool(self.instrumental, "instrumental")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if isinstance(self.sampling, SamplingRequest):
            out["sampling"] = self.sampling.to_dict()
        out["kind"] = self.kind
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "kind"}
        return super().from_dict(data)


@dataclasses.dataclass
class GenerateRequest(_SongRequest):
    """A new song of ``duration`` seconds; ``full_length`` holds the model's end of song off until then."""

    kind: ClassVar[str] = "generate"

    duration: float = 0.0
    full_length: bool = False
    stereo: bool = False

    def validate(self) -> None:
        super().validate()
        self.duration = DURATION.check(self.duration)
        self.full_length = _check_bool(self.full_length, "full_length")
        self.stereo = _check_bool(self.stereo, "stereo")


@dataclasses.dataclass
class _EditRequest(_SongRequest):
    """What extend and infill share: the crossfade, level matching and the inversion budget."""

    crossfade: float = DEFAULT_CROSSFADE
    match_level: bool = True
    inversion_steps: int | None = None

    def validate(self) -> None:
        super().validate()
        self.crossfade = CROSSFADE.check(self.crossfade)
        self.match_level = _check_bool(self.match_level, "match_level")
        if self.inversion_steps is not None:
            self.inversion_steps = INVERSION_STEPS.check(self.inversion_steps)


@dataclasses.dataclass
class ExtendRequest(_EditRequest):
    """``seconds`` more after the song (exactly that many: the model's end of song is held off)."""

    kind: ClassVar[str] = "extend"

    seconds: float = DEFAULT_EXTEND_SECONDS

    def validate(self) -> None:
        super().validate()
        self.seconds = EXTEND_SECONDS.check(self.seconds)


@dataclasses.dataclass
class InfillRequest(_EditRequest):
    """Regenerate ``[start, end)`` seconds; ``song_seconds`` (when known) bounds ``end``."""

    kind: ClassVar[str] = "infill"

    start: float = 0.0
    end: float = 0.0

    def validate(self, song_seconds: float | None = None) -> None:  # type: ignore[override]
        super().validate()
        self.start = TIME.check(self.start, "start")
        self.end = TIME.check(self.end, "end")
        if self.start >= self.end:
            raise RequestError("start", f"start ({self.start:g} s) must be before end ({self.end:g} s)")
        if song_seconds is not None and self.end > song_seconds + 1e-6:
            raise RequestError("end", f"end ({self.end:g} s) is past the end of the song ({song_seconds:.2f} s)")


@dataclasses.dataclass
class TakeRequest(JsonConfig):
    """How a take is delivered into a DAW project, beyond its stems: tempo conform and audio to MIDI.

    ``conform``: fit the take to ``conform_bpm`` (else the project's / session's tempo) and put its first
    downbeat on a bar line; None = the default by model (off for a song a model's tempo clock already
    played at that tempo, on otherwise when a target tempo is known). ``source_bpm``: the take's own
    tempo as the producer hears it, for a beat the tracker may read in half or double time (the
    authors' example recording reads 68 or 136); conform keeps the tracker's exact reading in that
    octave instead of the one nearest the target. ``midi``: write a ``.mid`` per pitched stem next to
    its WAV (:mod:`dr2studio.audio.transcribe`).
    """

    conform: bool | None = None
    conform_bpm: float | None = None
    source_bpm: float | None = None
    midi: bool = False

    def validate(self) -> None:
        if self.conform is not None:
            self.conform = _check_bool(self.conform, "conform")
        if self.conform_bpm is not None:
            self.conform_bpm = TEMPO.check(self.conform_bpm, "conform_bpm")
        self.midi = _check_bool(self.midi, "midi")
        if self.conform is False and self.conform_bpm is not None:
            raise RequestError("conform_bpm", "conform_bpm is given but conform is off; drop one of them")
        if self.source_bpm is not None:
            self.source_bpm = TEMPO.check(self.source_bpm, "source_bpm")
            if self.conform is False:
                raise RequestError("source_bpm", "source_bpm is given but conform is off; drop one of them")
