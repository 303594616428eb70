"""Rescale a trained VAE so that its latents have unit standard deviation (an exact re-parametrisation).

    python training/recipes/demo_latent_scale.py --model-dir runs/demo/vae-export \
        --manifest runs/demo/songs/manifest.jsonl --count 40

Why: the VAE is trained without a KL term (as in the paper), so nothing fixes the scale of its latents
(ours drift to a standard deviation near 10). Flow matching starts from unit Gaussian noise and the
end-of-prediction frames are all ones, so the DiT wants latents of about unit scale. Dividing the
encoder's output projection by ``s`` and multiplying the decoder's first convolution by ``s`` changes
nothing the decoder hears (``conv_pre(s * z / s)``; both layers are linear, zero padding stays zero)
while the latents become ``z / s``. ``s`` is the standard deviation of the latents of ``--count`` songs.
The factor is recorded in ``dr2studio.json`` under ``training.latent_scale``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

__all__ = ["measure_scale", "apply_scale", "main"]

log = logging.getLogger("dr2studio.training.demo_latent_scale")


@torch.no_grad()
def measure_scale(model_dir: Path, manifest: Path, count: int) -> tuple[float, int]:
    """Standard deviation of the encoder's latents over the first ``count`` songs, and the frames seen."""
    from dr2studio.data.manifest import load_audio, read_manifest
    from dr2studio.models.encoder import load_encoder

    encoder = load_encoder(model_dir, device="cpu")
    hop = encoder.hop_length
    parts = []
    for row in read_manifest(manifest)[:count]:
        audio = load_audio(row.audio, encoder.sample_rate, max_seconds=30.0)
        frames = audio.shape[0] // hop
        if frames:
            parts.append(encoder(torch.from_numpy(audio[: frames * hop])[None, None])[0])
    if not parts:
        raise SystemExit(f"demo_latent_scale: no usable audio in the first {count} rows of {manifest}")
    z = torch.cat(parts)
    return float(z.std()), int(z.shape[0])


def apply_scale(model_dir: Path, scale: float) -> None:
    """Rewrite ``encoder.*`` and ``decoder.*`` in ``model_dir`` so latents come out divided by ``scale``."""
    from dr2studio.models.bigvgan import load_decoder, save_decoder
    from dr2studio.models.encoder import load_encoder, save_encoder

    if not scale > 0:
        raise ValueError(f"latent scale must be positive, got {scale}")
    encoder = load_encoder(model_dir, device="cpu", dtype=torch.float32)
    decoder = load_decoder(model_dir, device="cpu", dtype=torch.float32)
    if encoder.config.kl:
        raise SystemExit("demo_latent_scale: a KL encoder already has a fixed latent scale; nothing to do")
    if decoder.config.transformer_layers:
        raise SystemExit("demo_latent_scale: decoders with a pre-transformer read latents non-linearly")
    with torch.no_grad():
        encoder.conv_out.weight.div_(scale)
        encoder.conv_out.bias.div_(scale)
        decoder.conv_pre.weight.mul_(scale)
    save_encoder(encoder, model_dir)
    save_decoder(decoder, model_dir)


def main(argv: list[str] | None = None) -> int:
    from training.export import write_training_info

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="model directory with encoder.* and decoder.*")
    p.add_argument("--manifest", type=Path, required=True, help="songs to measure the latents on")
    p.add_argument("--count", type=int, default=40, help="number of songs to measure")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    scale, frames = measure_scale(args.model_dir, args.manifest, args.count)
    apply_scale(args.model_dir, scale)
    after, _ = measure_scale(args.model_dir, args.manifest, min(args.count, 8))
    info = {"divided_by": scale, "frames_measured": frames, "std_after": after}
    write_training_info(args.model_dir, "latent_scale", info)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
