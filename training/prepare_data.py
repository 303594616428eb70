"""Stage 0: songs (a JSONL manifest) -> training shards, with Ray Data.

    python -m training.prepare_data --manifest songs/manifest.jsonl --output data/shards \\
        --set encoder_kwargs='{"model_dir": "models/ours"}' --set tokenizer_kwargs='{"vocab": "models/ours"}'

Pipeline: read the manifest -> decode with soundfile, mix to mono, resample to the encoder's rate
and cut to ``max_seconds`` (Ray tasks) -> VAE-encode to 5 Hz latents and extract SSL features for
REPA (``map_batches`` on an actor pool; GPU actors with ``encoder_num_gpus``) -> tokenise lyrics and
embed the style (a second actor pool) -> shards of ``shard_size`` songs plus ``index.json``
(see :mod:`dr2studio.data.shards`). Bad rows (malformed lines, unreadable audio, too short,
empty lyrics, a failing encoder) are counted per reason and reported, never fatal.

Every model-facing step is pluggable as ``"module:Class"`` plus keyword arguments: the class is
constructed once per actor and called per song (see :class:`VaeEncoder`, :class:`MelFeatures`,
:class:`MuQFeatures`, :class:`VocabTokenizer`, :class:`StyleEmbedder`).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.data.manifest import BadRows, ManifestRow, load_audio, read_manifest
from dr2studio.data.shards import DatasetIndex, Example, write_index, write_shard
from dr2studio.style.tags import parse_style_tags
from training.common import make_group_readable

__all__ = [
    "PrepareConfig", "load_plugin", "VaeEncoder", "MelFeatures", "MuQFeatures", "VocabTokenizer",
    "StyleEmbedder", "DecodeAudio", "EncodeAudio", "EncodeText", "prepare", "main",
]

log = logging.getLogger("dr2studio.training.prepare_data")


@dataclasses.dataclass
class PrepareConfig(JsonConfig):
    manifest: str = ""
    output: str = ""
    max_seconds: float = 210.0  # longer songs keep their first max_seconds
    min_seconds: float = 4.0  # shorter songs are bad rows ("too short")
    allow_empty_lyrics: bool = False  # instrumental songs
    encoder: str = "training.prepare_data:VaeEncoder"
    encoder_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. {"model_dir": "..."}
    ssl: list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [{"name": "mel", "cls": "training.prepare_data:MelFeatures", "kwargs": {}}]
    )
    tokenizer: str = "training.prepare_data:VocabTokenizer"
    tokenizer_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"vocab": path or model dir}
    style: str = "training.prepare_data:StyleEmbedder"
    style_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"model_dir": ...}
    shard_size: int = 256
    encode_batch_size: int = 4
    num_encoders: int = 1  # size of the encoding actor pool
    encoder_num_gpus: float = 0.0  # GPUs per encoding actor (e.g. 1 on a GPU cluster)
    num_text_workers: int = 1

    def validate(self) -> None:
        if self.min_seconds <= 0 or self.max_seconds < self.min_seconds:
            raise ConfigError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        if self.shard_size < 1 or self.encode_batch_size < 1 or self.num_encoders < 1 or self.num_text_workers < 1:
            raise ConfigError("shard_size, encode_batch_size, num_encoders and num_text_workers must be >= 1")
        for spec in self.ssl:
            if not {"name", "cls"} <= set(spec):
                raise ConfigError(f"each ssl entry needs 'name' and 'cls', got {spec}")


def load_plugin(spec: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Instantiate ``"package.module:Name"`` with ``kwargs``."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"plugin spec must look like 'package.module:Name', got {spec!r}")
    try:
        if module_name == __name__ and attr in globals():  # built-ins: no import needed on workers
            cls = globals()[attr]
        else:
            cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load plugin {spec!r}: {exc}") from exc
    return cls(**(kwargs or {}))


# --------------------------------------------------------------------------- built-in plugins


class VaeEncoder:
    """Our music-VAE encoder from a model directory (``encoder.json`` + ``encoder.safetensors``).

    ``__call__(audio [B, N] float32 at sample_rate, lengths [B])`` -> list of latents ``[T_i, C]``.
    """

    @staticmethod
    def rates(model_dir: str, **_: Any) -> tuple[int, float]:
        """(input sample rate, latent frame rate) from ``encoder.json``, without loading weights."""
        from dr2studio.models.encoder import EncoderConfig

        cfg = EncoderConfig.load(Path(model_dir) / "encoder.json")
        return cfg.sample_rate, cfg.frame_rate

    def __init__(self, model_dir: str, device: str | None = None) -> None:
        from dr2studio.models.encoder import load_encoder

        self.encoder = load_encoder(model_dir, device=device)
        self.sample_rate = self.encoder.sample_rate
        self.hop_length = self.encoder.hop_length
        self.frame_rate = self.sample_rate / self.hop_length

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        hop = self.hop_length
        x = torch.from_numpy(audio)
        x = F.pad(x, (0, -x.shape[1] % hop))[:, None].to(self.encoder.device)
        lat = self.encoder(x, sample=False).float().cpu()
        return [lat[i, : math.ceil(int(n) / hop)].numpy() for i, n in enumerate(lengths)]


class MelFeatures:
    """A small built-in REPA target: log-mel frames pooled to the latent rate, then a fixed random
    orthogonal projection to ``dim``. Cheap and deterministic; use :class:`MuQFeatures` for real runs."""

    def __init__(self, dim: int = 64, n_mels: int = 64, seed: int = 0) -> None:
        self.dim, self.n_mels, self.seed = dim, n_mels, seed
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(max(dim, n_mels), max(dim, n_mels), generator=g))
        self.proj = q[:n_mels, :dim].contiguous()
        self._mel: dict[int, Any] = {}

    def __call__(self, audio: np.ndarray, sample_rate: int, frames: int) -> np.ndarray:
        import torchaudio

        if sample_rate not in self._mel:
            self._mel[sample_rate] = torchaudio.transforms.MelSpectrogram(
                sample_rate, n_fft=1024, hop_length=256, n_mels=self.n_mels)
        mel = torch.log(self._mel[sample_rate](torch.from_numpy(audio)) + 1e-5).T  # [t, n_mels]
        pooled = F.adaptive_avg_pool1d(mel.T[None], frames)[0].T  # [frames, n_mels]
        pooled = (pooled - pooled.mean(0)) / (pooled.std(0) + 1e-5)
        return (pooled @ self.proj).numpy().astype(np.float32)


class MuQFeatures:
    """MuQ hidden states (``layer``) at 25 Hz pooled to the latent rate: the paper's REPA target.

    Needs the ``muq`` package (``pip install dr2studio[muq]``) and its weights.
    """

    def __init__(self, model: str = "OpenMuQ/MuQ-large-msd-iter", layer: int = 9, device: str | None = None) -> None:
        try:
            from muq import MuQ
        except ImportError as exc:
            raise ConfigError("MuQFeatures needs the muq package: pip install 'dr2studio[muq]'") from exc
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = MuQ.from_pretrained(model).to(self.device).eval()
        self.layer = layer

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, sample_rate: int, frames: int) -> np.ndarray:
        import torchaudio.functional as AF

        wav = torch.from_numpy(audio)
        if sample_rate != 24000:
            wav = AF.resample(wav, sample_rate, 24000)
        out = self.model(wav[None].to(self.device), output_hidden_states=True)
        h = out.hidden_states[self.layer][0].float().cpu()  # [t, 1024]
        return F.adaptive_avg_pool1d(h.T[None], frames)[0].T.numpy()


class VocabTokenizer:
    """Lyrics -> token ids with the released front end (:func:`dr2studio.lyrics.encode_lyrics`)."""

    def __init__(self, vocab: str, g2p_assets: str | None = None) -> None:
        from dr2studio.lyrics import load_vocab

        self.vocab = load_vocab(vocab)
        self.g2p_assets = g2p_assets

    def __call__(self, lyrics: str) -> list[int]:
        from dr2studio.lyrics import encode_lyrics

        return encode_lyrics(lyrics, self.vocab, self.g2p_assets)


class StyleEmbedder:
    """Style -> ``[512]``: a precomputed vector file, else the model's style encoder on the style
    audio or text (the tag encoder when ``model_dir`` has one, else MuQ-MuLan)."""

    def __init__(self, model_dir: str | None = None, muq: str | None = None) -> None:
        self.model_dir, self.muq = model_dir, muq
        self._encoder: Any = None

    def _enc(self) -> Any:
        if self._encoder is None:
            from dr2studio.style import DEFAULT_MUQ, load_style_encoder

            self._encoder = load_style_encoder(self.model_dir, muq=self.muq or DEFAULT_MUQ)
        return self._encoder

    def __call__(self, row: dict[str, Any]) -> np.ndarray:
        from dr2studio.style import load_style_embedding, style_embedding

        if row.get("style_embedding"):
            return load_style_embedding(row["style_embedding"]).numpy()
        prompt = row.get("style_audio") or row.get("style")
        if not prompt:
            raise ValueError("no style text, style audio or style embedding")
        return style_embedding(prompt, self._enc()).numpy()


# --------------------------------------------------------------------------- pipeline stages


class DecodeAudio:
    """Row -> row with ``audio`` (float32 mono at the encoder rate) or ``error``."""

    def __init__(self, sample_rate: int, max_seconds: float, min_seconds: float, allow_empty_lyrics: bool) -> None:
        self.sample_rate, self.max_seconds, self.min_seconds = sample_rate, max_seconds, min_seconds
        self.allow_empty_lyrics = allow_empty_lyrics

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row, error="", audio=np.zeros(0, np.float32))
        if not self.allow_empty_lyrics and not str(row.get("lyrics", "")).strip():
            row["error"] = "empty lyrics"
            return row
        try:
            audio = load_audio(row["audio_path"], self.sample_rate, self.max_seconds)
        except Exception as exc:  # soundfile raises several types for broken files
            row["error"] = f"unreadable audio: {type(exc).__name__}"
            return row
        if audio.shape[0] < self.min_seconds * self.sample_rate:
            row["error"] = "too short"
            return row
        if not np.isfinite(audio).all():
            row["error"] = "non-finite audio"
            return row
        row["audio"] = audio
        return row


class EncodeAudio:
    """Batch stage (actor pool): VAE latents and SSL features; drops the audio."""

    def __init__(self, encoder: str, encoder_kwargs: dict[str, Any], ssl: list[dict[str, Any]]) -> None:
        self.encoder = load_plugin(encoder, encoder_kwargs)
        self.ssl = [(s["name"], load_plugin(s["cls"], s.get("kwargs"))) for s in ssl]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        errors = list(batch["error"])
        latents: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * n
        feats: dict[str, list[np.ndarray]] = {name: [np.zeros((0, 0), np.float32)] * n for name, _ in self.ssl}
        ok = [i for i in range(n) if not errors[i]]
        if ok:
            audios = [batch["audio"][i] for i in ok]
            lengths = np.array([a.shape[0] for a in audios])
            padded = np.zeros((len(ok), int(lengths.max())), np.float32)
            for j, a in enumerate(audios):
                padded[j, : a.shape[0]] = a
            try:
                lats = self.encoder(padded, lengths)
            except Exception as exc:  # a plugin failure marks the rows, it does not stop the job
                log.warning("encoder failed on %s: %s", [batch["id"][i] for i in ok], exc)
                lats = None
            for j, i in enumerate(ok):
                if lats is None:
                    errors[i] = "encoder failed"
                    continue
                latents[i] = np.asarray(lats[j], np.float32)
                try:
                    for name, fx in self.ssl:
                        feats[name][i] = np.asarray(fx(audios[j], self.encoder.sample_rate, latents[i].shape[0]), np.float32)
                except Exception as exc:
                    errors[i] = f"ssl features failed: {type(exc).__name__}"
        out = {k: v for k, v in batch.items() if k != "audio"}
        out["error"] = np.array(errors, dtype=object)
        out["latents"] = _objects(latents)
        for name, values in feats.items():
            out[f"ssl.{name}"] = _objects(values)
        return out


class EncodeText:
    """Batch stage (actor pool): lyric tokens and the style embedding."""

    def __init__(self, tokenizer: str, tokenizer_kwargs: dict[str, Any], style: str, style_kwargs: dict[str, Any]) -> None:
        self.tokenizer = load_plugin(tokenizer, tokenizer_kwargs)
        self.style = load_plugin(style, style_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        errors = list(batch["error"])
        tokens: list[np.ndarray] = [np.zeros(0, np.int64)] * n
        styles: list[np.ndarray] = [np.zeros(0, np.float32)] * n
        tempos = np.full(n, np.nan, np.float32)
        for i in range(n):
            if errors[i]:
                continue
            row = {k: batch[k][i] for k in ("lyrics", "style", "style_audio", "style_embedding")}
            try:
                tokens[i] = np.asarray(self.tokenizer(str(row["lyrics"])), np.int64)
            except Exception as exc:
                errors[i] = f"tokenizer failed: {type(exc).__name__}"
                continue
            if tokens[i].size == 0 and str(row["lyrics"]).strip():
                errors[i] = "lyrics gave no tokens"
                continue
            try:
                styles[i] = np.asarray(self.style(row), np.float32)
            except Exception as exc:
                errors[i] = f"style failed: {type(exc).__name__}: {exc}"
            bpm = parse_style_tags(str(row["style"])).tempo if row["style"] else None
            if bpm is not None:
                tempos[i] = bpm
        out = dict(batch)
        out["tempo"] = tempos
        out["error"] = np.array(errors, dtype=object)
        out["tokens"] = _objects(tokens)
        out["style_vec"] = _objects(styles)
        return out


def _objects(values: Sequence[np.ndarray]) -> np.ndarray:
    """A 1-d object array of arrays (ragged columns survive Ray Data batches this way)."""
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def _encoder_rate(cfg: PrepareConfig) -> tuple[int, float]:
    """The encoder's input sample rate and latent frame rate, read without building the actor."""
    kw = cfg.encoder_kwargs
    module_name, _, attr = cfg.encoder.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if hasattr(cls, "rates"):
        sr, fr = cls.rates(**kw)
        return int(sr), float(fr)
    probe = load_plugin(cfg.encoder, kw)
    return int(probe.sample_rate), float(probe.frame_rate)


def prepare(cfg: PrepareConfig) -> DatasetIndex:
    """Run the pipeline and write shards + ``index.json`` into ``cfg.output``; returns the index."""
    import ray
    from ray import cloudpickle

    import training

    cloudpickle.register_pickle_by_value(training)  # workers need only dr2studio installed
    if not cfg.manifest or not cfg.output:
        raise ConfigError("prepare_data needs both `manifest` and `output`")
    out = Path(cfg.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    bad = BadRows()
    rows: list[ManifestRow] = read_manifest(cfg.manifest, bad)
    sample_rate, frame_rate = _encoder_rate(cfg)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        # a local instance: let workers import plugins from this checkout (a cluster job has --working-dir)
        repo = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address=address, runtime_env=None if address else {"env_vars": {"PYTHONPATH": path}})
    items = [dict(r.to_dict(), audio_path=r.audio, duration=r.duration or 0.0) for r in rows]
    for item in items:
        item.pop("audio")
    ds = ray.data.from_items(items)
    ds = ds.map(DecodeAudio(sample_rate, cfg.max_seconds, cfg.min_seconds, cfg.allow_empty_lyrics))
    ds = ds.map_batches(
        EncodeAudio, fn_constructor_kwargs=dict(encoder=cfg.encoder, encoder_kwargs=cfg.encoder_kwargs, ssl=cfg.ssl),
        batch_size=cfg.encode_batch_size, compute=ray.data.ActorPoolStrategy(size=cfg.num_encoders),
        num_gpus=cfg.encoder_num_gpus or None,
        batch_format="numpy",
    )
    ds = ds.map_batches(
        EncodeText, fn_constructor_kwargs=dict(tokenizer=cfg.tokenizer, tokenizer_kwargs=cfg.tokenizer_kwargs,
                                               style=cfg.style, style_kwargs=cfg.style_kwargs),
        batch_size=16, compute=ray.data.ActorPoolStrategy(size=cfg.num_text_workers), batch_format="numpy",
    )
    ssl_names = [s["name"] for s in cfg.ssl]
    infos, pending, ssl_dims = [], [], {}
    latent_channels = style_dim = 0

    def flush() -> None:
        if pending:
            infos.append(write_shard(out / f"shard-{len(infos):05d}.safetensors", pending))
            pending.clear()

    for row in ds.iter_rows():
        if row["error"]:
            bad.add(str(row["error"]).split(":")[0], f"{row['id']}: {row['error']}")
            continue
        ex = Example(
            id=str(row["id"]), latents=torch.tensor(np.asarray(row["latents"], np.float32)),
            tokens=torch.tensor(np.asarray(row["tokens"], np.int64)),
            style=torch.tensor(np.asarray(row["style_vec"], np.float32)),
            ssl={n: torch.tensor(np.asarray(row[f"ssl.{n}"], np.float32)) for n in ssl_names},
            language=str(row.get("language") or ""),
            tempo=float(row["tempo"]),
        )
        latent_channels, style_dim = ex.latents.shape[1], ex.style.shape[0]
        ssl_dims = {n: int(v.shape[1]) for n, v in ex.ssl.items()}
        pending.append(ex)
        if len(pending) >= cfg.shard_size:
            flush()
    flush()
    report = {"manifest": str(cfg.manifest), "kept": sum(i.count for i in infos),
              "bad": bad.to_dict(), "sample_rate": sample_rate}
    index = DatasetIndex(shards=infos, latent_rate=frame_rate, latent_channels=latent_channels, style_dim=style_dim,
                         ssl=ssl_dims, report=report)
    write_index(out, index)
    make_group_readable(out / "index.json", *out.glob("shard-*.safetensors"))  # safetensors leaves 0600 files
    log.info("kept %d songs in %d shards; %d bad rows: %s", report["kept"], len(infos), bad.total, bad.counts)
    return index


def _smoke_setup(root: Path) -> dict[str, Any]:
    """Synthetic songs and a small random model folder (encoder, tag style encoder, phoneme table):
    a CPU check of the whole pipeline with nothing downloaded."""
    from dr2studio.models.encoder import EncoderConfig, MusicEncoder, save_encoder
    from dr2studio.lab.testing import build_tiny_model
    from training.smoke_data import make_audio_manifest

    manifest = make_audio_manifest(root / "songs", num_songs=6, seconds=5.0, sample_rate=16000)
    model = build_tiny_model(root / "model", style_encoder=True)  # vocab.json + style encoder
    torch.manual_seed(0)
    save_encoder(MusicEncoder(EncoderConfig(sample_rate=8000, channels=4, channel_mults=[1, 2], strides=[40, 40])), model)
    return {"manifest": str(manifest), "output": str(root / "shards"), "min_seconds": 2.0,
            "encoder_kwargs": {"model_dir": str(model)}, "tokenizer_kwargs": {"vocab": str(model)},
            "style_kwargs": {"model_dir": str(model)}, "shard_size": 4}


def main(argv: Sequence[str] | None = None) -> DatasetIndex:
    import argparse

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description="Songs (JSONL manifest) -> training shards, with Ray Data")
    p.add_argument("--config", type=Path)
    p.add_argument("--manifest")
    p.add_argument("--output")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true", help="synthetic songs and a random small encoder (CPU check)")
    args = p.parse_args(argv)
    data = _smoke_setup(Path(args.output or "~/dr2studio-runs/prepare-smoke").expanduser()) if args.smoke else {}
    if args.config:
        data.update(PrepareConfig.load(args.config).to_dict())
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    if args.manifest:
        data["manifest"] = args.manifest
    if args.output and not args.smoke:
        data["output"] = args.output
    index = prepare(PrepareConfig.from_dict(data))
    print(json.dumps(index.report, indent=2))
    return index


if __name__ == "__main__":
    main()
