"""The studio: generate, extend and infill songs with one loaded model.

Shape legend: T latent frames (5 per second), M latent channels, N audio samples, C channels.

:meth:`Studio.run` is a façade in the shape of a diffusers pipeline: validate the request, resolve its
conditions, read the song's state (latents), compute a splice plan (:mod:`dr2studio.audio.splice`: every
index of the edit, at the song's own rate), render (:mod:`dr2studio.render`: the sample/decode loop) and
apply the plan (splice the new audio into the song), giving a :class:`Song`.

``extend`` continues the song's latents with the sampler (the KV cache sees the old frames as a clean
prefix) and decodes a short window of old context plus the new frames; the new audio then replaces
the old only from the splice point on, through an equal-power crossfade that ends at the last old
frame (a block boundary of the new generation). Every sample before the crossfade is the input's.
``infill`` regenerates ``[start, end)`` the same way from the prefix before ``start`` and crossfades
back into the original after ``end``; the timeline length is unchanged and every sample outside
``[start - crossfade, end + crossfade]`` is the input's.

A producer's recording is never degraded: both return the input's sample rate and channels, the kept
samples bit for bit (:meth:`Song.save` writes them back in the input's bit depth); only the model's
new audio is resampled to the input's rate, given the input's level (:mod:`dr2studio.audio.level`)
and crossfaded in there. Lengths are honoured or explained: ``extend`` holds the song's end off until
``seconds`` are added, ``generate`` ends early only where the model ends the song, and every result
carries ``settings["length"]`` (:func:`length_report`: requested vs delivered seconds and why).

Example::

    studio = Studio.load("path/to/model")
    song = studio.generate(open("song.lrc").read(), "style.npy", duration=60, seed=1)
    song = studio.extend(song, "[outro]\\nla la la", seconds=20)
    song.save("song.wav")           # + song.dr2.safetensors
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from dr2studio.audio.io import fake_stereo, resample, to_mono
from dr2studio.audio.level import LEVEL_WINDOW
from dr2studio.audio.splice import (
    ExtendPlan,
    ExtendSplice,
    InfillPlan,
    apply_infill,
    infill_latents,
    plan_extend,
    plan_infill,
)
from dr2studio.render import AudioCallback, ProgressCallback, Rendered, render
from dr2studio.requests import (
    DEFAULT_CFG_STRENGTH,
    DEFAULT_CROSSFADE,
    DEFAULT_STEPS,
    MAX_SECONDS,
    ExtendRequest,
    GenerateRequest,
    InfillRequest,
    PlainText,
    RequestError,
    SamplingRequest,
    TakeRequest,
)
from dr2studio.song import Edit, Song

if TYPE_CHECKING:
    from dr2studio.lyrics.coverage import LyricsCoverage

__all__ = ["Studio", "Song", "StudioError", "StudioRequestError", "SongRequest", "Conditions", "ProgressCallback",
           "AudioCallback", "MAX_SECONDS", "model_fingerprint", "length_report", "LEVEL_WINDOW", "SplicePlan"]

log = logging.getLogger(__name__)

#: What :meth:`Studio.run` takes: one typed request of :mod:`dr2studio.requests`.
SongRequest = GenerateRequest | ExtendRequest | InfillRequest
#: The splice plan of an edit (:mod:`dr2studio.audio.splice`).
SplicePlan = ExtendPlan | InfillPlan
_STYLE_DIM = 512
_EMBEDDING_EXTS = {".npy", ".safetensors"}
_AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".aif", ".aiff"}
_LYRICS_EXTS = (".lrc", ".txt")


class StudioError(ValueError):
    """Bad input to a studio call (empty lyrics, absurd durations, a song from another model, ...)."""


class StudioRequestError(RequestError, StudioError):
    """A request value the Studio refuses at entry: the :class:`RequestError` every front door gives for
    it (same ``field``, ``code`` and message), and a :class:`StudioError` for callers that catch those."""


@dataclasses.dataclass
class Conditions:
    """What a request resolves to before sampling, once: lyric tokens (and their text and coverage),
    the ``[512]`` style vector, the tempo (bpm, None: no tempo clock) and the seed actually used."""

    tokens: torch.Tensor
    text: str
    coverage: "LyricsCoverage"
    style: torch.Tensor
    tempo: float | None
    seed: int


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """A short id of a model directory: its configs, weight-file sizes and the weights' first MiB.

    Cheap (no full hash of multi-GB files) but changes whenever the architecture or the weights file do.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for name in ("model.json", "decoder.json", "model.safetensors", "decoder.safetensors", "decoder.bin", "vocab.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        h.update(name.encode())
        h.update(str(path.stat().st_size).encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _new_seed(seed: int | None) -> int:
    """The validated seed, or a fresh random one (recorded in the song so the take can be redone)."""
    return secrets.randbelow(2**31 - 1) if seed is None else int(seed)


def _request_text(value: Any) -> Any:
    """What a request records for a lyrics/style argument: a path as its text, anything else as is."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _request_style(style: Any) -> str | None:
    """The style text a request records: a prompt or a file path; a tensor/array stays with the caller."""
    style = _request_text(style)
    return style if isinstance(style, str) else None


class _StereoStream:
    """Streaming version of :func:`fake_stereo`: keeps the delay line across chunks."""

    def __init__(self, sample_rate: int, delay_s: float = 0.01, gain: float = 0.8) -> None:
        self.gain = gain
        self.tail = torch.zeros(1, int(delay_s * sample_rate))

    def __call__(self, mono: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.tail, mono], dim=1)
        right = self.gain * joined[:, : mono.shape[1]]
        self.tail = joined[:, mono.shape[1] :]
        return torch.cat([mono, right], dim=0)


def length_report(requested: float, delivered: float, ended_at: float | None = None, *,
                  what: str = "the song", held: bool = False) -> dict[str, Any]:
    """``{"requested", "delivered", "ended_early", "reason"}`` seconds: what was asked vs what came out, and why.

    Every Song carries one (``settings["length"]``; an edit's in ``edits[-1]["length"]``) so that no
    caller has to guess whether a short result was meant.
    """
    short = delivered < requested - 1e-3
    reason = None
    if short:
        at = f" at {ended_at:.2f} s" if ended_at is not None else ""
        if held:
            reason = (f"the model kept ending {what}{at} (end-of-song frames) although the end was held off; "
                      f"{delivered:.2f} of {requested:g} s delivered")
        else:
            reason = (f"the model ended {what}{at} (end-of-song frames detected), {delivered:.2f} of the "
                      f"{requested:g} s asked for; continue it with extend, or hold the end off (full_length / --full-length)")
    return {"requested": round(float(requested), 4), "delivered": round(float(delivered), 4),
            "ended_early": short, "reason": reason}


class Studio:
    """A loaded DiT + decoder + phoneme table, with the song operations on top.

    Use :meth:`load`. All methods are synchronous; progress and streamed audio come through callbacks.
    """

    def __init__(
        self,
        dit: Any,
        decoder: Any,
        model_dir: str | os.PathLike,
        *,
        g2p_assets: str | os.PathLike | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.dit = dit
        self.decoder = decoder
        self.model_dir = Path(model_dir)
        self.g2p_assets = g2p_assets
        self.fingerprint = fingerprint or model_fingerprint(self.model_dir)
        if dit.config.mel_dim != decoder.latent_dim:
            raise StudioError(f"DiT latents have {dit.config.mel_dim} channels but the decoder reads {decoder.latent_dim}")

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        g2p_assets: str | os.PathLike | None = None,
    ) -> "Studio":
        """Load a model directory (released or dr2studio layout) or a hub repository id.

        Without ``model`` the shipped demo model is loaded (as every CLI command does), so a first
        ``Studio.load()`` works offline; it is small and English-only, use the released weights for music.
        """
        from dr2studio.checkpoints import load_dit, resolve_model_dir
        from dr2studio.models.bigvgan import load_decoder

        if model is None:
            from dr2studio.demo import demo_model_dir

            model = demo_model_dir()
            log.info("studio: no model given; loading the shipped demo model %s (English-only phoneme table)", model)
        model_dir = resolve_model_dir(model)
        if not (model_dir / "vocab.json").is_file():
            raise StudioError(f"{model_dir} has no vocab.json (the phoneme table the lyrics are encoded with)")
        dit = load_dit(model_dir, device=device, dtype=dtype)
        dec_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        decoder = load_decoder(model_dir, device=dit.device, dtype=dec_dtype)
        log.info("studio: model %s on %s (%s)", model_dir, dit.device, dit.dtype)
        return cls(dit, decoder, model_dir, g2p_assets=g2p_assets)

    # -- ratings -------------------------------------------------------------------------------------
    @staticmethod
    def rate(project: str | os.PathLike, take: str, stars: int, *, dimension: str = "overall") -> Any:
        """Rate ``take`` of the DAW project folder ``project`` 1..5 stars (``dimension``: ``overall`` or one
        of :data:`dr2studio.ratings.DIMENSIONS`); returns the stored :class:`~dr2studio.ratings.Rating`.
        Needs no model: ratings feed preference training (``dr2studio prefs export``), see docs/ratings.md."""
        from dr2studio.ratings import RatingStore

        return RatingStore(project).rate(take, stars, dimension=dimension, source="studio")

    # -- takes into a DAW project ---------------------------------------------------------------------
    @staticmethod
    def export_stems(song: Song, project: str | os.PathLike, *, options: TakeRequest | None = None,
                     **kwargs: Any) -> dict[str, Any]:
        """Render ``song`` into the DAW project folder ``project`` as a take (stems, manifest entry), with
        ``options`` for tempo conform and MIDI (:class:`~dr2studio.requests.TakeRequest`, checked at entry;
        docs/conform_and_midi.md). ``kwargs`` are those of :func:`dr2studio.audio.stems.export_stems`.
        Needs no model; returns the take's manifest entry."""
        from dr2studio.audio.stems import export_stems

        return export_stems(song, project, options=options, **kwargs)

    # -- properties ----------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.decoder.sample_rate)

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame (9600 for the release)."""
        return int(self.decoder.hop_length)

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (5 for the release)."""
        return self.sample_rate / self.hop_length

    @property
    def block_size(self) -> int:
        return int(self.dit.config.block_size)

    # -- conditions ----------------------------------------------------------------------------------
    def encode_lyrics(self, lyrics: str | os.PathLike, *, instrumental: bool = False) -> tuple[torch.Tensor, str]:
        """Lyrics text (or a path to a ``.lrc``/``.txt`` file) -> ``([N] token ids, text)``.

        Warns when the model's phoneme table drops phones and refuses lyrics it cannot voice at all
        (see :meth:`lyrics_condition`).
        """
        tokens, text, _ = self.lyrics_condition(lyrics, instrumental=instrumental)
        return tokens, text

    def lyrics_condition(self, lyrics: str | os.PathLike, *,
                         instrumental: bool = False) -> tuple[torch.Tensor, str, LyricsCoverage]:
        """``(token ids, text, LyricsCoverage)``: the lyric condition and what the phoneme table kept of it.

        Dropped phones are logged as a warning (how many, which language). Lyric lines of which no sung
        phone survives raise :class:`StudioError` unless ``instrumental``; an instrumental conditions on
        the structure tags only (``[inst]`` when there are none) and sings no line.
        """
        from dr2studio.lyrics import parse_lyrics, parse_lyrics_file
        from dr2studio.lyrics.coverage import lyrics_coverage
        from dr2studio.lyrics.g2p import lyrics_phonemes
        from dr2studio.lyrics.vocab import STOP_ID, TAG_IDS

        if (isinstance(lyrics, str) and not isinstance(lyrics, PlainText) and "\n" not in lyrics
                and lyrics.strip().lower().endswith(_LYRICS_EXTS)):  # PlainText: data only, never a path
            if not Path(lyrics.strip()).is_file():  # a file name, not words to sing
                raise StudioError(f"lyrics file not found: {lyrics.strip()}")
            lyrics = Path(lyrics.strip())
        if isinstance(lyrics, os.PathLike):
            doc = parse_lyrics_file(lyrics)
        elif isinstance(lyrics, str):
            if not lyrics.strip():
                raise StudioError("lyrics are empty")
            doc = parse_lyrics(lyrics)
        else:
            raise StudioError(f"lyrics must be text or a file path, got {type(lyrics).__name__}")
        text = doc.to_text()
        lines = lyrics_phonemes(doc, self.model_dir, self.g2p_assets)
        coverage = lyrics_coverage(lines, source=doc.source, table=self._table_label(), instrumental=instrumental)
        if instrumental:
            ids = [i for line in lines if line.is_tag for i in line.ids] or [TAG_IDS["inst"], STOP_ID]
            log.info("instrumental: %d lyric lines are not sung; the model gets the structure tags only",
                     coverage.lyric_lines)
        else:
            if coverage.nothing_to_sing:
                raise StudioError(coverage.refusal())
            if coverage.any_dropped:
                log.warning("%s", coverage.summary())
            ids = [i for line in lines for i in line.ids]
        if not ids:
            raise StudioError(f"lyrics {doc.source or ''} hold no singable line or structure tag".replace("  ", " "))
        tokens = torch.tensor(ids, dtype=torch.long)
        top = int(self.dit.config.text_num_embeds)
        if int(tokens.max()) > top:
            raise StudioError(f"lyric token {int(tokens.max())} exceeds the model's text table (ids up to {top})")
        return tokens, text, coverage

    def _table_label(self) -> str:
        from dr2studio.demo import DEMO_DIR

        same = self.model_dir.resolve() == DEMO_DIR.resolve()
        return "the shipped demo model (English only)" if same else str(self.model_dir)

    def style_embedding(self, style: Any) -> torch.Tensor:
        """A ``[512]`` float32 style vector from a tensor/array, an embedding file, an audio file or text.

        Text and audio prompts go through :mod:`dr2studio.style` (MuQ-MuLan, or the model's own style
        encoder when its directory has one); precomputed ``.npy``/``.safetensors`` vectors always work.
        """
        if style is None:
            raise StudioError("a style is needed: a text prompt, a reference audio file or a 512-d embedding")
        if isinstance(style, (torch.Tensor, np.ndarray)):
            vec = torch.as_tensor(np.asarray(style) if isinstance(style, np.ndarray) else style).float().reshape(-1)
            if vec.numel() != _STYLE_DIM:
                raise StudioError(f"style embedding must have {_STYLE_DIM} values, got shape {tuple(style.shape)}")
            if not torch.isfinite(vec).all():
                raise StudioError("style embedding holds NaN or infinite values")
            return vec.cpu()
        if isinstance(style, (str, os.PathLike)):
            path = Path(style)
            suffix = path.suffix.lower()
            if not isinstance(style, PlainText) and (suffix in _EMBEDDING_EXTS or suffix in _AUDIO_EXTS
                                                     or isinstance(style, os.PathLike)):
                if not path.is_file():
                    raise StudioError(f"style file not found: {path}")
                if suffix in _EMBEDDING_EXTS:
                    from dr2studio.style.embedding import load_style_embedding

                    return self.style_embedding(load_style_embedding(path))
                if suffix in _AUDIO_EXTS:
                    return self.style_embedding(self._style_model().embed_audio(path))
                raise StudioError(f"style file {path} is neither an embedding (.npy/.safetensors) nor audio")
            if not style.strip():
                raise StudioError("style prompt is empty")
            return self.style_embedding(self._style_model().embed_text(style))
        raise StudioError(f"style must be a tensor, a file path or a text prompt, got {type(style).__name__}")

    @staticmethod
    def stated_tempo(style: Any) -> float | None:
        """The tempo (bpm) a text style prompt states ("pop, 120 bpm"); None for other prompts.

        A model with a tempo clock (:func:`dr2studio.models.dit.tempo_clock`) places its beat on it.
        """
        if not isinstance(style, str) or Path(style).suffix.lower() in _EMBEDDING_EXTS | _AUDIO_EXTS:
            return None
        from dr2studio.style.tags import parse_style_tags

        return parse_style_tags(style).tempo

    # -- requests ------------------------------------------------------------------------------------
    @staticmethod
    def validate(request: SongRequest, song: Song | None = None) -> SongRequest:
        """``request`` checked (and normalised) in place against :mod:`dr2studio.requests`, before any work.

        An infill is also bounded by ``song``'s length. A bad value raises :class:`StudioRequestError`
        with the message every front door gives for it.
        """
        try:
            if isinstance(request, InfillRequest):
                seconds = song.audio.shape[1] / song.sample_rate if isinstance(song, Song) else None
                request.validate(song_seconds=seconds)
            elif isinstance(request, (GenerateRequest, ExtendRequest)):
                request.validate()
            else:
                raise RequestError("request", f"expected a generate, extend or infill request, got {type(request).__name__}")
        except StudioRequestError:
            raise
        except RequestError as exc:
            raise StudioRequestError(exc.field, str(exc)) from None
        return request

    def conditions(self, request: SongRequest, song: Song | None = None, *, lyrics: Any = None,
                   style: Any = None) -> Conditions:
        """Lyric tokens, style vector, tempo and seed of a validated ``request``, resolved in this one place.

        ``lyrics`` / ``style``: the objects the request's text stands for when the caller holds more than
        text (a lyrics file, a style tensor); by default the request's own lyrics and its
        ``style_embedding`` (which wins) or ``style``. An edit falls back to ``song``'s style and tempo.
        The tempo is the request's, else the one the style text states ("pop, 120 bpm").
        """
        tokens, text, coverage = self.lyrics_condition(request.lyrics if lyrics is None else lyrics,
                                                       instrumental=request.instrumental)
        if style is None:
            style = torch.tensor(request.style_embedding) if request.style_embedding is not None else request.style
        style_vec = self.style_embedding(style) if song is None else self._song_style(song, style)
        tempo = request.tempo if request.tempo is not None else self.stated_tempo(request.style)
        if tempo is None and song is not None:
            bpm = song.settings.get("tempo_bpm") if isinstance(song.settings, dict) else None
            tempo = float(bpm) if isinstance(bpm, (int, float)) and bpm > 0 else None
        return Conditions(tokens, text, coverage, style_vec, tempo, _new_seed(request.sampling.seed))

    def run(self, request: SongRequest, song: Song | None = None, *, progress: ProgressCallback | None = None,
            on_audio: AudioCallback | None = None, on_splice: Callable[[int], None] | None = None,
            lyrics: Any = None, style: Any = None) -> Song:
        """Render one typed request, in the shape of a diffusers pipeline: validate → conditions →
        song state → splice plan (:mod:`dr2studio.audio.splice`) → render (:mod:`dr2studio.render`) →
        apply the plan → :class:`Song`. A generate has no song state and no plan.

        ``song`` is the song an extend or infill edits. ``lyrics`` / ``style`` as in :meth:`conditions`.
        ``on_audio`` streams a generate or an extend; ``on_splice`` reports an extend's splice sample.
        """
        self.validate(request, song)
        if isinstance(request, GenerateRequest):
            return self._generate(request, self.conditions(request, lyrics=lyrics, style=style), progress, on_audio)
        if not isinstance(song, Song):
            raise StudioError(f"{request.kind} needs the song to edit, got {type(song).__name__}")
        if isinstance(request, InfillRequest) and (request.end - request.start) * self.frame_rate < 1:
            raise StudioError(f"the region must last at least one frame ({1 / self.frame_rate:g} s), "
                              f"got {request.end - request.start:g} s")
        cond = self.conditions(request, song, lyrics=lyrics, style=style)
        latents, encoded = self._song_state(song, progress, request.inversion_steps)
        if isinstance(request, ExtendRequest):  # plan, then render and apply while decoding
            plan = self.splice_plan(request, song, latents)
            return self._extend(request, song, cond, latents, encoded, plan, progress, on_audio, on_splice)
        infill_plan = self.splice_plan(request, song, latents)
        return self._infill(request, song, cond, latents, encoded, infill_plan, progress)

    @overload
    def splice_plan(self, request: ExtendRequest, song: Song, latents: torch.Tensor) -> ExtendPlan: ...
    @overload
    def splice_plan(self, request: InfillRequest, song: Song, latents: torch.Tensor) -> InfillPlan: ...

    def splice_plan(self, request: ExtendRequest | InfillRequest, song: Song, latents: torch.Tensor) -> SplicePlan:
        """Every index of an edit of ``song`` (latents ``[1, T, M]``) at the song's own rate, before any
        rendering: see :func:`~dr2studio.audio.splice.plan_extend` / :func:`~dr2studio.audio.splice.plan_infill`."""
        n, sr, frames = song.audio.shape[1], song.sample_rate, latents.shape[1]
        try:
            if isinstance(request, ExtendRequest):
                return plan_extend(n, sr, self.sample_rate, self.hop_length, frames, seconds=request.seconds,
                                   crossfade=request.crossfade, level_window=LEVEL_WINDOW)
            return plan_infill(n, sr, self.sample_rate, self.hop_length, frames, start=request.start,
                               end=request.end, crossfade=request.crossfade, level_window=LEVEL_WINDOW)
        except ValueError as exc:
            raise StudioError(str(exc)) from None

    def _style_model(self) -> Any:
        """The model's own tag style encoder when its directory has one, else MuQ-MuLan (loaded lazily)."""
        cached = self.__dict__.get("_style_encoder")
        if cached is None:
            from dr2studio.style.tag_encoder import CONFIG_NAME, TagStyleEncoder

            if (self.model_dir / CONFIG_NAME).is_file():
                cached = TagStyleEncoder.load(self.model_dir, device=self.dit.device)
            else:
                from dr2studio.style.muq import MuQStyleEncoder

                cached = MuQStyleEncoder(device=self.dit.device)
            self.__dict__["_style_encoder"] = cached
        return cached

    # -- sampling + decoding -------------------------------------------------------------------------
    def _render(
        self,
        tokens: torch.Tensor,
        style: torch.Tensor,
        max_frames: int,
        *,
        steps: int,
        cfg_strength: float,
        seed: int,
        prefix: torch.Tensor | None = None,
        context_frames: int = 0,
        stop_at_end: bool = True,
        progress: ProgressCallback | None = None,
        on_audio: Callable[[torch.Tensor], None] | None = None,
        tempo: float | None = None,
        hold_end: bool = False,
    ) -> Rendered:
        """:func:`dr2studio.render.render` with this studio's DiT and decoder: the sampler settings
        checked (a bad value is a :class:`StudioError`) and the noise seeded from ``seed``.
        ``stop_at_end=False`` or ``hold_end`` keep the model from ending the song early."""
        from dr2studio.flow.sampler import EOP_THRESHOLD, SamplerSettings

        try:
            settings = SamplerSettings(steps=int(steps), cfg_strength=float(cfg_strength),
                                       eop_threshold=EOP_THRESHOLD if stop_at_end and not hold_end else -1.0)
            settings.validate()
        except (TypeError, ValueError) as exc:
            raise StudioError(str(exc)) from exc
        return render(self.dit, self.decoder, tokens, style, max_frames, settings,
                      generator=torch.Generator("cpu").manual_seed(seed), prefix=prefix,
                      context_frames=context_frames, hold_end=hold_end, tempo=tempo, progress=progress,
                      on_audio=on_audio)

    # -- public operations ---------------------------------------------------------------------------
    def generate(
        self,
        lyrics: str | os.PathLike,
        style: Any,
        duration: float,
        steps: int = DEFAULT_STEPS,
        cfg_strength: float = DEFAULT_CFG_STRENGTH,
        seed: int | None = None,
        progress: ProgressCallback | None = None,
        on_audio: AudioCallback | None = None,
        *,
        stereo: bool = False,
        tempo: float | None = None,
        instrumental: bool = False,
        full_length: bool = False,
    ) -> Song:
        """A new song of ``duration`` seconds, or shorter where the model ends it (``settings["length"]`` says).

        The model may end a song early (end-of-song frames): the song is then shorter and
        ``settings["length"]`` (:func:`length_report`) holds requested vs delivered seconds and the
        reason, also logged as a warning. ``full_length`` holds the end off: end-of-song frames are
        dropped and sampling goes on until ``duration`` is reached.

        ``on_audio`` receives the audio ``[C, n]`` as it is decoded (C = 2 with ``stereo``); the chunks
        concatenated equal ``song.audio``. ``tempo`` (bpm) drives a model's tempo clock; by default
        the tempo a text ``style`` states (give it when the style is an embedding or audio).
        Builds a :class:`~dr2studio.requests.GenerateRequest` and renders it with :meth:`run`.
        """
        request = GenerateRequest(lyrics=_request_text(lyrics), style=_request_style(style), tempo=tempo,
                                  instrumental=instrumental, duration=duration, full_length=full_length, stereo=stereo,
                                  sampling=SamplingRequest(steps=steps, cfg_strength=cfg_strength, seed=seed))
        return self.run(request, progress=progress, on_audio=on_audio, lyrics=lyrics, style=style)

    def _generate(self, request: GenerateRequest, cond: Conditions, progress: ProgressCallback | None,
                  on_audio: AudioCallback | None) -> Song:
        duration, stereo, full_length = request.duration, request.stereo, request.full_length
        steps, cfg_strength = request.sampling.steps, request.sampling.cfg_strength
        tokens, text, coverage, style_vec, tempo, seed = (cond.tokens, cond.text, cond.coverage, cond.style,
                                                          cond.tempo, cond.seed)
        frames = max(1, round(duration * self.frame_rate))
        stream = _StereoStream(self.sample_rate) if stereo else None
        sink = None
        if on_audio is not None:
            sink = (lambda c: on_audio(stream(c))) if stream is not None else on_audio  # noqa: E731
        r = self._render(tokens, style_vec, frames, steps=steps, cfg_strength=cfg_strength, seed=seed,
                         progress=progress, on_audio=sink, tempo=tempo, hold_end=full_length)
        audio = fake_stereo(r.audio, self.sample_rate) if stereo else r.audio
        log.info("generated %.1f s in %.1f s (seed %d)", audio.shape[1] / self.sample_rate, r.seconds, seed)
        length = length_report(duration, audio.shape[1] / self.sample_rate,
                               None if r.ended_at is None else r.ended_at / self.frame_rate, held=full_length)
        if length["ended_early"]:
            log.warning("%s", length["reason"])
        return Song(
            audio=audio,
            sample_rate=self.sample_rate,
            latents=r.latents,
            tokens=tokens,
            lyrics=text,
            style=style_vec,
            seed=seed,
            settings={"steps": steps, "cfg_strength": cfg_strength, "duration": duration, "stereo": bool(stereo), "edits": [],
                      "length": length, "full_length": bool(full_length),
                      "lyrics_coverage": coverage.to_dict(),
                      **({"tempo_bpm": tempo} if tempo is not None else {}),
                      **({"tempo_clock_bpm": tempo} if self._on_clock(tempo) else {})},
            model=self.fingerprint,
        )

    def _song_state(self, song: Song, progress: ProgressCallback | None,
                    inversion_steps: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """The song's latents ``[1, T, M]`` (sidecar or encoded) and how they were obtained.

        Sidecar latents are used when they have the model's channel count and either the song is at
        the model's rate or was last rendered by this very model (a producer's take kept at 44.1 or
        48 kHz by an earlier edit). Otherwise the audio, resampled to the model's rate and mixed to mono
        for this purpose only, is encoded with :func:`dr2studio.vae.encode.encode_audio` (the model's
        encoder, else decoder inversion with ``inversion_steps`` optimiser steps). The song's own
        samples are never changed here.
        """
        if not isinstance(song, Song):
            raise StudioError(f"expected a Song, got {type(song).__name__}")
        mel = int(self.dit.config.mel_dim)
        if song.has_latents and song.latents.shape[-1] == mel:  # type: ignore[union-attr]
            if song.sample_rate == self.sample_rate or song.model == self.fingerprint:
                if song.model and song.model != self.fingerprint:
                    log.info("song was made with model %s, continuing with %s", song.model, self.fingerprint)
                return song.latents.float(), {"method": "sidecar", "seconds": 0.0}  # type: ignore[union-attr]
            log.warning("the sidecar latents come from model %s at %d Hz, not this model (%s); encoding the audio",
                        song.model, song.sample_rate, self.fingerprint)
        audio = song.audio.float()
        if song.sample_rate != self.sample_rate:
            log.info("song is at %d Hz; encoding a copy resampled to the model's %d Hz (the song keeps its rate)",
                     song.sample_rate, self.sample_rate)
            audio = resample(audio, song.sample_rate, self.sample_rate)
        from dr2studio.vae.encode import encode_audio
        from dr2studio.vae.inversion import InversionConfig

        config = None if inversion_steps is None else InversionConfig(steps=int(inversion_steps))  # validated by the request

        def report(step: int, total: int, loss: float) -> None:
            if progress is not None:
                progress(step, total, "encode")

        enc = encode_audio(to_mono(audio), self.sample_rate, self.model_dir, method="auto", progress=report,
                           device=self.dit.device, inversion=config,
                           decoder=self.decoder if self.decoder.dtype == torch.float32 else None)
        latents = enc.latents.detach().to("cpu", torch.float32)
        if latents.dim() != 3 or latents.shape[0] != 1 or latents.shape[-1] != mel:
            raise StudioError(f"encoder returned latents of shape {tuple(latents.shape)}, expected [1, T, {mel}]")
        log.info("encoded the song with %s in %.1f s (%d frames)", enc.method, enc.seconds, latents.shape[1])
        return latents, {"method": enc.method, "seconds": round(float(enc.seconds), 3)}

    def _channel_stream(self, channels: int, sample_rate: int, stereo: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """Mono model audio -> the song's ``channels``: the release's pseudo-stereo for a song rendered
        with ``stereo``, else the mono signal in every channel (a producer's take is not widened).
        Works chunk by chunk (the stereo delay line carries over)."""
        if channels == 1:
            return lambda chunk: chunk
        if channels == 2 and stereo:
            return _StereoStream(sample_rate)
        return lambda chunk: chunk.expand(channels, -1).contiguous()

    def _song_style(self, song: Song, style: Any) -> torch.Tensor:
        if style is not None:
            return self.style_embedding(style)
        if song.style is not None:
            return self.style_embedding(song.style)
        raise StudioError("this song has no sidecar with its style; give a style (text, audio file or embedding)")

    def extend(
        self,
        song: Song,
        lyrics: str | os.PathLike,
        seconds: float | None = None,
        *,
        style: Any = None,
        steps: int = DEFAULT_STEPS,
        cfg_strength: float = DEFAULT_CFG_STRENGTH,
        seed: int | None = None,
        crossfade: float = DEFAULT_CROSSFADE,
        progress: ProgressCallback | None = None,
        inversion_steps: int | None = None,
        on_audio: AudioCallback | None = None,
        on_splice: Callable[[int], None] | None = None,
        tempo: float | None = None,
        instrumental: bool = False,
        match_level: bool = True,
    ) -> Song:
        """Continue ``song`` with new ``lyrics`` by ``seconds`` (default 30).

        The result keeps the song's sample rate and channels, and its samples before
        ``song.last_edit.splice`` seconds are the input's, bit for bit. The model's new audio
        is resampled to the song's rate, scaled (``match_level``) so that its RMS over the
        :data:`LEVEL_WINDOW` seconds after the crossfade equals the input's over the same span before
        it, and crossfaded in. The end of the song is held off until ``seconds`` are added (the result
        is the input plus exactly ``seconds``); where the model still will not go on, the edit's
        ``length`` (:func:`length_report`, also ``settings["length"]``) says what was added and why.
        A song without usable sidecar latents is encoded first (``inversion_steps`` bounds a decoder
        inversion).

        Streaming: ``on_splice(sample)`` is called once with the splice point before any audio, then
        ``on_audio`` receives the output from that sample on as it is decoded (the crossfade in one
        piece once its window and the level measurement are complete, about ``LEVEL_WINDOW`` seconds
        of new audio); the chunks concatenated equal ``song.audio[:, sample:]``.
        ``tempo`` (bpm, for a model's tempo clock): by default the new style's, else the song's own.
        Builds an :class:`~dr2studio.requests.ExtendRequest` and renders it with :meth:`run`.
        """
        request = ExtendRequest(lyrics=_request_text(lyrics), style=_request_style(style), tempo=tempo,
                                instrumental=instrumental, crossfade=crossfade, match_level=match_level,
                                inversion_steps=inversion_steps,
                                sampling=SamplingRequest(steps=steps, cfg_strength=cfg_strength, seed=seed))
        if seconds is not None:
            request.seconds = seconds
        return self.run(request, song, progress=progress, on_audio=on_audio, on_splice=on_splice, lyrics=lyrics,
                        style=style)

    def _extend(self, request: ExtendRequest, song: Song, cond: Conditions, latents: torch.Tensor,
                encoded: dict[str, Any], plan: ExtendPlan, progress: ProgressCallback | None,
                on_audio: AudioCallback | None, on_splice: Callable[[int], None] | None) -> Song:
        """Render the extension by ``plan`` and splice it into ``song`` while it is decoded."""
        steps, cfg_strength, seed = request.sampling.steps, request.sampling.cfg_strength, cond.seed
        context = cond.tokens
        if encoded["method"] == "sidecar" and song.tokens is not None and song.tokens.numel():
            context = torch.cat([song.tokens.long().reshape(-1), cond.tokens])
            top = int(self.dit.config.text_num_embeds)
            if int(context.max()) > top:  # a sidecar from a model with a larger phoneme table
                raise StudioError(f"the song's sidecar holds lyric token {int(context.max())}, beyond this model's "
                                  f"text table (ids up to {top}); delete or rename the sidecar to continue from the audio")
        else:
            log.info("no lyric context for the existing audio; conditioning on the new lyrics only")
        audio, sr = song.audio.float(), song.sample_rate  # the producer's samples, at their rate
        channels = self._channel_stream(audio.shape[0], sr, bool(song.settings.get("stereo")))
        joined = ExtendSplice(plan, audio, channels=channels, match_level=request.match_level, on_audio=on_audio)
        if on_splice is not None:
            on_splice(plan.splice)
        r = self._render(context, cond.style, plan.max_frames, steps=steps, cfg_strength=cfg_strength, seed=seed,
                         prefix=latents[:, : plan.prefix_frames], context_frames=plan.context_frames,
                         progress=progress, on_audio=joined, tempo=cond.tempo, hold_end=True)
        out = joined.finish()
        length = length_report(request.seconds, (out.shape[1] - plan.input_samples) / sr,
                               None if r.ended_at is None else r.ended_at / plan.frame_rate, what="the extension",
                               held=True)
        if length["ended_early"]:
            log.warning("%s", length["reason"])
        edit = Edit(
            kind="extend",
            splice=plan.splice / sr,
            crossfade=plan.fade / sr,
            prefix_frames=plan.prefix_frames,
            new_frames=r.latents.shape[1] - plan.prefix_frames,
            seconds=request.seconds,
            added_seconds=length["delivered"],
            length=length,
            sample_rate=sr,
            level_match_db=(None if not request.match_level or joined.gain is None
                            else round(20 * math.log10(joined.gain), 2)),
            end_frames_dropped=r.dropped,
            lyrics=cond.text,
            seed=seed,
            latents_from=encoded,
            lyrics_coverage=cond.coverage.to_dict(),
        )
        return self._derived(song, out, r.latents, context, _join_lyrics(song.lyrics, cond.text), cond.style, seed,
                             steps, cfg_strength, edit, cond.tempo)

    def infill(
        self,
        song: Song,
        start: float,
        end: float,
        lyrics: str | os.PathLike,
        *,
        style: Any = None,
        steps: int = DEFAULT_STEPS,
        cfg_strength: float = DEFAULT_CFG_STRENGTH,
        seed: int | None = None,
        crossfade: float = DEFAULT_CROSSFADE,
        progress: ProgressCallback | None = None,
        inversion_steps: int | None = None,
        tempo: float | None = None,
        instrumental: bool = False,
        match_level: bool = True,
    ) -> Song:
        """Regenerate ``[start, end)`` seconds with new ``lyrics``; everything else is kept.

        The new part continues from the latents before ``start`` (conditioned on the new lyrics) and is
        crossfaded back into the original after ``end``. The result keeps the song's sample rate,
        channels and length; samples outside ``[start - crossfade, end + crossfade]`` are the input's,
        bit for bit. With ``match_level`` the new part is scaled so that its first
        :data:`LEVEL_WINDOW` seconds have the RMS of the input's last ``LEVEL_WINDOW`` seconds before
        the crossfade (or of the audio after the range, when the range starts the song).
        ``tempo`` (bpm, for a model's tempo clock): by default the new style's, else the song's own.
        Builds an :class:`~dr2studio.requests.InfillRequest` and renders it with :meth:`run`.
        """
        request = InfillRequest(lyrics=_request_text(lyrics), style=_request_style(style), tempo=tempo,
                                instrumental=instrumental, crossfade=crossfade, match_level=match_level,
                                inversion_steps=inversion_steps, start=start, end=end,
                                sampling=SamplingRequest(steps=steps, cfg_strength=cfg_strength, seed=seed))
        return self.run(request, song, progress=progress, lyrics=lyrics, style=style)

    def _infill(self, request: InfillRequest, song: Song, cond: Conditions, latents: torch.Tensor,
                encoded: dict[str, Any], plan: InfillPlan, progress: ProgressCallback | None) -> Song:
        """Render the region by ``plan`` (the model may not end it early) and splice it into ``song``."""
        steps, cfg_strength, seed = request.sampling.steps, request.sampling.cfg_strength, cond.seed
        audio, sr = song.audio.float(), song.sample_rate  # the producer's samples, at their rate
        prefix = latents[:, : plan.prefix_frames] if plan.prefix_frames > 0 else None
        r = self._render(cond.tokens, cond.style, plan.max_frames, steps=steps, cfg_strength=cfg_strength, seed=seed,
                         prefix=prefix, context_frames=plan.context_frames, stop_at_end=False, progress=progress,
                         tempo=cond.tempo)
        out, gain = apply_infill(plan, audio, r.audio, match_level=request.match_level,
                                 channels=self._channel_stream(audio.shape[0], sr, bool(song.settings.get("stereo"))))
        edit = Edit(
            kind="infill",
            start=request.start,
            end=request.end,
            crossfade_in=plan.fade_in / sr,
            crossfade_out=plan.fade_out / sr,
            sample_rate=sr,
            level_match_db=round(20 * math.log10(gain), 2) if request.match_level else None,
            lyrics=cond.text,
            seed=seed,
            latents_from=encoded,
            lyrics_coverage=cond.coverage.to_dict(),
        )
        tokens = song.tokens if song.tokens is not None and encoded["method"] == "sidecar" else cond.tokens
        return self._derived(song, out, infill_latents(plan, latents, r.latents), tokens, song.lyrics or cond.text,
                             cond.style, seed, steps, cfg_strength, edit, cond.tempo)

    # -- helpers ---------------------------------------------------------------------------------------
    def _on_clock(self, tempo: float | None) -> bool:
        """Whether this model's tempo clock plays a song at ``tempo`` (so its beat is on the grid)."""
        return tempo is not None and getattr(self.dit, "clock_embed", None) is not None

    def _derived(self, song: Song, audio: torch.Tensor, latents: torch.Tensor, tokens: torch.Tensor | None,
                 lyrics: str, style: torch.Tensor, seed: int, steps: int, cfg_strength: float,
                 edit: Edit, tempo: float | None = None) -> Song:
        settings = song.settings_with_edit(dataclasses.replace(edit, steps=steps, cfg_strength=cfg_strength))
        settings.setdefault("stereo", False)  # a producer's take is not pseudo-stereo; later edits keep its layout
        settings["length"] = edit.length  # the newest operation's; infill keeps the length by construction
        if tempo is not None:
            settings["tempo_bpm"] = tempo
        if self._on_clock(tempo):
            settings["tempo_clock_bpm"] = tempo  # played on the grid: a take is not conformed by default
        else:
            settings.pop("tempo_clock_bpm", None)
        return Song(
            audio=audio,
            sample_rate=song.sample_rate,
            latents=latents,
            tokens=tokens,
            lyrics=lyrics,
            style=style,
            seed=song.seed if song.seed is not None else seed,
            settings=settings,
            model=self.fingerprint,
            subtype=song.subtype,
        )


def _join_lyrics(old: str, new: str) -> str:
    return f"{old.rstrip()}\n{new}" if old.strip() else new
