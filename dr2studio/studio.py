"""The studio: generate, extend and infill songs with one loaded model.

Shape legend: T latent frames (5 per second), M latent channels, N audio samples, C channels.

``extend`` continues the song's latents with the sampler (the KV cache sees the old frames as a clean
prefix) and decodes a short window of old context plus the new frames; the new audio then replaces
the old only from the splice point on, through an equal-power crossfade that ends at the last old
frame (a block boundary of the new generation). Every sample before the crossfade is the input's.
``infill`` regenerates ``[start, end)`` the same way from the prefix before ``start`` and crossfades
back into the original after ``end``; the timeline length is unchanged and every sample outside
``[start - crossfade, end + crossfade]`` is the input's.

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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dr2studio.audio.io import fake_stereo, resample, to_mono
from dr2studio.audio.splice import SpliceStream, splice
from dr2studio.song import Song

__all__ = ["Studio", "Song", "StudioError", "ProgressCallback", "AudioCallback", "MAX_SECONDS", "model_fingerprint"]

log = logging.getLogger(__name__)

#: ``progress(done, total, stage)``: stage is "sample" (one call per block), "decode" (one per
#: decoded chunk), "encode" (a song without sidecar) and finally "done" (done == total);
#: ``done``/``total`` count over the whole call (total may grow while decoding).
ProgressCallback = Callable[[int, int, str], None]
#: ``on_audio(chunk)`` with each newly decoded ``[C, n]`` float32 chunk, in timeline order.
AudioCallback = Callable[[torch.Tensor], None]

MAX_SECONDS = 600.0
DEFAULT_EXTEND_SECONDS = 30.0
DEFAULT_CROSSFADE = 0.25
_CONTEXT_FRAMES = 8  # old frames decoded before a splice, so the decoder's edge effects fall outside it
_STYLE_DIM = 512
_EMBEDDING_EXTS = {".npy", ".safetensors"}
_AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".aif", ".aiff"}
_LYRICS_EXTS = (".lrc", ".txt")


class StudioError(ValueError):
    """Bad input to a studio call (empty lyrics, absurd durations, a song from another model, ...)."""


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
    if seed is None:
        return secrets.randbelow(2**31 - 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (0 <= int(seed) < 2**63):
        raise StudioError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_seconds(value: float, what: str, *, low: float = 0.0) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"{what} must be a number of seconds, got {value!r}") from exc
    if not math.isfinite(value) or value <= low or value > MAX_SECONDS:
        raise StudioError(f"{what} must be in ({low:g}, {MAX_SECONDS:g}] seconds, got {value:g}")
    return value


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


@dataclasses.dataclass
class _Render:
    """Result of one sampling + decoding run."""

    latents: torch.Tensor  # [1, T, M] on CPU, prefix included
    audio: torch.Tensor  # [1, n] mono, starting at frame ``first_frame``
    first_frame: int
    seconds: float


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
        model: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        g2p_assets: str | os.PathLike | None = None,
    ) -> "Studio":
        """Load a model directory (released or dr2studio layout) or a hub repository id."""
        from dr2studio.checkpoints import load_dit, resolve_model_dir
        from dr2studio.models.bigvgan import load_decoder

        model_dir = resolve_model_dir(model)
        if not (model_dir / "vocab.json").is_file():
            raise StudioError(f"{model_dir} has no vocab.json (the phoneme table the lyrics are encoded with)")
        dit = load_dit(model_dir, device=device, dtype=dtype)
        dec_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        decoder = load_decoder(model_dir, device=dit.device, dtype=dec_dtype)
        log.info("studio: model %s on %s (%s)", model_dir, dit.device, dit.dtype)
        return cls(dit, decoder, model_dir, g2p_assets=g2p_assets)

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
    def encode_lyrics(self, lyrics: str | os.PathLike) -> tuple[torch.Tensor, str]:
        """Lyrics text (or a path to a ``.lrc``/``.txt`` file) -> ``([N] token ids, text)``."""
        from dr2studio.lyrics import encode_lyrics, parse_lyrics, parse_lyrics_file

        if isinstance(lyrics, str) and "\n" not in lyrics and lyrics.strip().lower().endswith(_LYRICS_EXTS):
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
        ids = encode_lyrics(doc, self.model_dir, self.g2p_assets)
        if not ids:
            raise StudioError(f"lyrics {doc.source or ''} hold no singable line or structure tag".replace("  ", " "))
        tokens = torch.tensor(ids, dtype=torch.long)
        top = int(self.dit.config.text_num_embeds)
        if int(tokens.max()) > top:
            raise StudioError(f"lyric token {int(tokens.max())} exceeds the model's text table (ids up to {top})")
        return tokens, text

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
            if suffix in _EMBEDDING_EXTS or suffix in _AUDIO_EXTS or isinstance(style, os.PathLike):
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

    @staticmethod
    def _tempo(tempo: float | None, style: Any) -> float | None:
        """``tempo`` checked, else the one ``style`` states."""
        if tempo is None:
            return Studio.stated_tempo(style)
        try:
            tempo = float(tempo)
        except (TypeError, ValueError) as exc:
            raise StudioError(f"tempo must be a number of beats per minute, got {tempo!r}") from exc
        if not (math.isfinite(tempo) and 20.0 <= tempo <= 999.0):
            raise StudioError(f"tempo must be 20..999 bpm, got {tempo:g}")
        return tempo

    def _song_tempo(self, song: Song, style: Any, tempo: float | None) -> float | None:
        """The tempo to continue ``song`` at: the one given, the new style's, else the one it was made with."""
        tempo = self._tempo(tempo, style)
        if tempo is not None:
            return tempo
        bpm = song.settings.get("tempo_bpm") if isinstance(song.settings, dict) else None
        return float(bpm) if isinstance(bpm, (int, float)) and bpm > 0 else None

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
    ) -> _Render:
        """Sample up to ``max_frames`` (prefix included) and decode the new frames block by block.

        Sampling and decoding interleave: the decoder pulls blocks from the sampler as it needs them,
        so audio chunks come out while later blocks are still being sampled. The decoded audio starts
        ``context_frames`` before the end of ``prefix``. ``tempo`` (bpm) drives the DiT's tempo
        clock when it has one; frame 0 of the stream is beat 0.
        """
        from dr2studio.flow.sampler import EOP_THRESHOLD, BlockSampler, SamplerSettings

        try:
            settings = SamplerSettings(
                steps=int(steps), cfg_strength=float(cfg_strength), eop_threshold=EOP_THRESHOLD if stop_at_end else -1.0
            )
            settings.validate()
        except (TypeError, ValueError) as exc:
            raise StudioError(str(exc)) from exc
        generator = torch.Generator("cpu").manual_seed(seed)
        dev = self.dit.device
        beats_per_frame = None
        if tempo is not None and self.dit.clock_embed is not None:
            beats_per_frame = torch.tensor([tempo / 60.0 / self.frame_rate])
            log.info("tempo clock at %g bpm", tempo)
        sampler = BlockSampler(
            self.dit,
            tokens.reshape(1, -1).to(dev),
            style.reshape(1, -1).to(dev),
            max_frames,
            settings,
            prefix=None if prefix is None else prefix.to(dev),
            generator=generator,
            beats_per_frame=beats_per_frame,
        )
        prefix_len = 0 if prefix is None else prefix.shape[1]
        first = prefix_len - context_frames
        total = 2 * sampler.num_blocks
        done = 0

        def report(stage: str) -> None:
            nonlocal done, total
            done += 1
            total = max(total, done)
            if progress is not None:
                progress(done, total, stage)

        def blocks() -> Iterator[torch.Tensor]:
            if context_frames:
                yield prefix[:, first:prefix_len].to(dev)  # type: ignore[index]
            for block in sampler.blocks():
                report("sample")
                yield block

        started = time.perf_counter()
        chunks: list[torch.Tensor] = []
        for audio in self.decoder.decode_stream(blocks()):
            chunk = audio[0].to("cpu", torch.float32)  # [1, n]
            chunks.append(chunk)
            report("decode")
            if on_audio is not None:
                on_audio(chunk)
        if progress is not None:
            progress(total, total, "done")
        latents = sampler.latents.to("cpu", torch.float32)
        audio = torch.cat(chunks, dim=1) if chunks else torch.zeros(1, 0)
        return _Render(latents=latents, audio=audio, first_frame=first, seconds=time.perf_counter() - started)

    # -- public operations ---------------------------------------------------------------------------
    def generate(
        self,
        lyrics: str | os.PathLike,
        style: Any,
        duration: float,
        steps: int = 32,
        cfg_strength: float = 2.0,
        seed: int | None = None,
        progress: ProgressCallback | None = None,
        on_audio: AudioCallback | None = None,
        *,
        stereo: bool = False,
        tempo: float | None = None,
    ) -> Song:
        """A new song of at most ``duration`` seconds (the model may end it earlier).

        ``on_audio`` receives the audio ``[C, n]`` as it is decoded (C = 2 with ``stereo``); the chunks
        concatenated equal ``song.audio``. ``tempo`` (bpm) drives a model's tempo clock; by default
        the tempo a text ``style`` states (give it when the style is an embedding or audio).
        """
        duration = _check_seconds(duration, "duration")
        frames = max(1, round(duration * self.frame_rate))
        tokens, text = self.encode_lyrics(lyrics)
        style_vec = self.style_embedding(style)
        tempo = self._tempo(tempo, style)
        seed = _new_seed(seed)
        stream = _StereoStream(self.sample_rate) if stereo else None
        sink = None
        if on_audio is not None:
            sink = (lambda c: on_audio(stream(c))) if stream is not None else on_audio  # noqa: E731
        r = self._render(tokens, style_vec, frames, steps=steps, cfg_strength=cfg_strength, seed=seed,
                         progress=progress, on_audio=sink, tempo=tempo)
        audio = fake_stereo(r.audio, self.sample_rate) if stereo else r.audio
        log.info("generated %.1f s in %.1f s (seed %d)", audio.shape[1] / self.sample_rate, r.seconds, seed)
        return Song(
            audio=audio,
            sample_rate=self.sample_rate,
            latents=r.latents,
            tokens=tokens,
            lyrics=text,
            style=style_vec,
            seed=seed,
            settings={"steps": steps, "cfg_strength": cfg_strength, "duration": duration, "stereo": bool(stereo), "edits": [],
                      **({"tempo_bpm": tempo} if tempo is not None else {})},
            model=self.fingerprint,
        )

    def _song_state(self, song: Song, progress: ProgressCallback | None,
                    inversion_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The song's audio ``[C, N]`` at the model rate and its latents ``[1, T, M]`` (sidecar or encoded).

        Without usable sidecar latents the audio is encoded with :func:`dr2studio.vae.encode.encode_audio`
        (the model's encoder, else decoder inversion with ``inversion_steps`` optimiser steps).
        """
        if not isinstance(song, Song):
            raise StudioError(f"expected a Song, got {type(song).__name__}")
        audio = song.audio.float()
        if song.sample_rate != self.sample_rate:
            log.warning("song is at %d Hz; resampling to the model's %d Hz", song.sample_rate, self.sample_rate)
            audio = resample(audio, song.sample_rate, self.sample_rate)
        mel = int(self.dit.config.mel_dim)
        if song.has_latents and song.latents.shape[-1] == mel and song.sample_rate == self.sample_rate:  # type: ignore[union-attr]
            if song.model and song.model != self.fingerprint:
                log.warning("song was made with model %s, continuing with %s", song.model, self.fingerprint)
            return audio, song.latents.float(), {"method": "sidecar", "seconds": 0.0}  # type: ignore[union-attr]
        from dr2studio.vae.encode import encode_audio
        from dr2studio.vae.inversion import InversionConfig

        config = None
        if inversion_steps is not None:
            if int(inversion_steps) < 1:
                raise StudioError(f"inversion_steps must be >= 1, got {inversion_steps}")
            config = InversionConfig(steps=int(inversion_steps))

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
        return audio, latents, {"method": enc.method, "seconds": round(float(enc.seconds), 3)}

    def _match_channels(self, new: torch.Tensor, channels: int) -> torch.Tensor:
        if channels == 1:
            return new
        stereo = fake_stereo(new, self.sample_rate)
        return stereo if channels == 2 else stereo[:1].expand(channels, -1).contiguous()

    def _channel_stream(self, channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Streaming :meth:`_match_channels`: mono chunks in, chunks with ``channels`` channels out."""
        if channels == 1:
            return lambda chunk: chunk
        if channels == 2:
            return _StereoStream(self.sample_rate)
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
        steps: int = 32,
        cfg_strength: float = 2.0,
        seed: int | None = None,
        crossfade: float = DEFAULT_CROSSFADE,
        progress: ProgressCallback | None = None,
        inversion_steps: int | None = None,
        on_audio: AudioCallback | None = None,
        on_splice: Callable[[int], None] | None = None,
        tempo: float | None = None,
    ) -> Song:
        """Continue ``song`` with new ``lyrics`` for up to ``seconds`` (default 30).

        The lyric context is the song's lyrics followed by the new ones. The output's samples before
        ``settings["edits"][-1]["splice"]`` seconds are the input's (at the model rate). A song without
        sidecar latents is encoded first (``inversion_steps`` bounds a decoder inversion).

        Streaming: ``on_splice(sample)`` is called once with the splice point before any audio, then
        ``on_audio`` receives the output from that sample on as it is decoded (the crossfade in one
        piece once its window is complete); the chunks concatenated equal ``song.audio[:, sample:]``.
        ``tempo`` (bpm, for a model's tempo clock): by default the new style's, else the song's own.
        """
        seconds = _check_seconds(DEFAULT_EXTEND_SECONDS if seconds is None else seconds, "seconds")
        crossfade = self._check_crossfade(crossfade)
        new_tokens, new_text = self.encode_lyrics(lyrics)
        style_vec = self._song_style(song, style)
        tempo = self._song_tempo(song, style, tempo)
        seed = _new_seed(seed)
        audio, latents, encoded = self._song_state(song, progress, inversion_steps)
        context = new_tokens
        if encoded["method"] == "sidecar" and song.tokens is not None and song.tokens.numel():
            context = torch.cat([song.tokens.long().reshape(-1), new_tokens])
        else:
            log.info("no lyric context for the existing audio; conditioning on the new lyrics only")
        hop = self.hop_length
        prefix_len = min(latents.shape[1], audio.shape[1] // hop)  # an encoded song's last partial frame is dropped
        if prefix_len < 1:
            raise StudioError(f"the song is shorter than one latent frame ({hop} samples)")
        latents = latents[:, :prefix_len]
        joint = prefix_len * hop  # end of the old audio = start of the first new block
        fade = min(round(crossfade * self.sample_rate), joint)
        ctx = min(prefix_len, math.ceil(fade / hop) + _CONTEXT_FRAMES)
        max_frames = prefix_len + max(1, round(seconds * self.frame_rate))
        sink = None
        if on_audio is not None:
            channels = self._channel_stream(audio.shape[0])
            joined = SpliceStream(audio[:, joint - fade : joint], joint - fade, offset=(prefix_len - ctx) * hop)

            def sink(chunk: torch.Tensor) -> None:
                out = joined(channels(chunk))
                if out.shape[1]:
                    on_audio(out)

        if on_splice is not None:
            on_splice(joint - fade)
        r = self._render(context, style_vec, max_frames, steps=steps, cfg_strength=cfg_strength, seed=seed,
                         prefix=latents, context_frames=ctx, progress=progress, on_audio=sink, tempo=tempo)
        new = self._match_channels(r.audio, audio.shape[0])
        out = splice(audio[:, :joint], new, at=joint - fade, fade=fade, offset=r.first_frame * hop)
        added = r.latents.shape[1] - prefix_len
        if added == 0:
            log.warning("the model ended the song at once; nothing was added")
        edit = {
            "kind": "extend",
            "splice": (joint - fade) / self.sample_rate,
            "crossfade": fade / self.sample_rate,
            "prefix_frames": prefix_len,
            "new_frames": added,
            "seconds": seconds,
            "lyrics": new_text,
            "seed": seed,
            "latents_from": encoded,
        }
        return self._derived(song, out, r.latents, context, _join_lyrics(song.lyrics, new_text), style_vec, seed,
                             steps, cfg_strength, edit, tempo)

    def infill(
        self,
        song: Song,
        start: float,
        end: float,
        lyrics: str | os.PathLike,
        *,
        style: Any = None,
        steps: int = 32,
        cfg_strength: float = 2.0,
        seed: int | None = None,
        crossfade: float = DEFAULT_CROSSFADE,
        progress: ProgressCallback | None = None,
        inversion_steps: int | None = None,
        tempo: float | None = None,
    ) -> Song:
        """Regenerate ``[start, end)`` seconds with new ``lyrics``; everything else is kept.

        The new part continues from the latents before ``start`` (conditioned on the new lyrics) and is
        crossfaded back into the original after ``end``. Samples outside
        ``[start - crossfade, end + crossfade]`` are the input's; the length is unchanged.
        ``tempo`` (bpm, for a model's tempo clock): by default the new style's, else the song's own.
        """
        crossfade = self._check_crossfade(crossfade)
        new_tokens, new_text = self.encode_lyrics(lyrics)
        style_vec = self._song_style(song, style)
        tempo = self._song_tempo(song, style, tempo)
        seed = _new_seed(seed)
        try:
            start, end = float(start), float(end)
        except (TypeError, ValueError) as exc:
            raise StudioError(f"start and end must be numbers of seconds, got {start!r}, {end!r}") from exc
        total_s = song.audio.shape[1] / song.sample_rate
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
            raise StudioError(f"start must be >= 0 seconds, got {start:g}")
        if start >= end:
            raise StudioError(f"start ({start:g} s) must be before end ({end:g} s)")
        if end > total_s + 1e-6:
            raise StudioError(f"end ({end:g} s) is past the end of the song ({total_s:.2f} s)")
        if (end - start) * self.frame_rate < 1:
            raise StudioError(f"the region must last at least one frame ({1 / self.frame_rate:g} s), got {end - start:g} s")
        audio, latents, encoded = self._song_state(song, progress, inversion_steps)
        hop, sr = self.hop_length, self.sample_rate
        length = audio.shape[1]
        st, et = round(start * sr), min(round(end * sr), length)
        fade_in, fade_out = min(round(crossfade * sr), st), min(round(crossfade * sr), length - et)
        first_new = min(math.floor(start * self.frame_rate), latents.shape[1])
        frames = max(first_new + 1, math.ceil((et + fade_out) / hop))
        ctx = min(first_new, math.ceil(fade_in / hop) + _CONTEXT_FRAMES)
        prefix = latents[:, :first_new] if first_new > 0 else None
        r = self._render(new_tokens, style_vec, frames, steps=steps, cfg_strength=cfg_strength, seed=seed,
                         prefix=prefix, context_frames=ctx, stop_at_end=False, progress=progress, tempo=tempo)
        new = self._match_channels(r.audio, audio.shape[0])
        head = splice(audio[:, : et + fade_out], new, at=st - fade_in, fade=fade_in, offset=r.first_frame * hop)
        out = splice(head, audio, at=et, fade=fade_out)
        keep = min(round(end * self.frame_rate), r.latents.shape[1], latents.shape[1])
        new_latents = torch.cat([r.latents[:, :keep], latents[:, keep:]], dim=1)
        edit = {
            "kind": "infill",
            "start": start,
            "end": end,
            "crossfade_in": fade_in / sr,
            "crossfade_out": fade_out / sr,
            "lyrics": new_text,
            "seed": seed,
            "latents_from": encoded,
        }
        tokens = song.tokens if song.tokens is not None and encoded["method"] == "sidecar" else new_tokens
        return self._derived(song, out, new_latents, tokens, song.lyrics or new_text, style_vec, seed,
                             steps, cfg_strength, edit, tempo)

    # -- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_crossfade(crossfade: float) -> float:
        try:
            crossfade = float(crossfade)
        except (TypeError, ValueError) as exc:
            raise StudioError(f"crossfade must be a number of seconds, got {crossfade!r}") from exc
        if not math.isfinite(crossfade) or not (0.0 <= crossfade <= 2.0):
            raise StudioError(f"crossfade must be in [0, 2] seconds, got {crossfade:g}")
        return crossfade

    def _derived(self, song: Song, audio: torch.Tensor, latents: torch.Tensor, tokens: torch.Tensor | None,
                 lyrics: str, style: torch.Tensor, seed: int, steps: int, cfg_strength: float,
                 edit: dict[str, Any], tempo: float | None = None) -> Song:
        settings = dict(song.settings)
        settings.setdefault("stereo", audio.shape[0] == 2)
        settings["edits"] = list(settings.get("edits", [])) + [dict(edit, steps=steps, cfg_strength=cfg_strength)]
        if tempo is not None:
            settings["tempo_bpm"] = tempo
        return Song(
            audio=audio,
            sample_rate=self.sample_rate,
            latents=latents,
            tokens=tokens,
            lyrics=lyrics,
            style=style,
            seed=song.seed if song.seed is not None else seed,
            settings=settings,
            model=self.fingerprint,
        )


def _join_lyrics(old: str, new: str) -> str:
    return f"{old.rstrip()}\n{new}" if old.strip() else new
