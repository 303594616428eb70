"""Decoder speed: real-time factor of ``decode`` and ``decode_stream``, latency to first audio, peak memory.

    python benchmarks/decoder.py                                  # tiny + released size on this machine
    python benchmarks/decoder.py --configs released --frames 150  # a 30 s song at the released size (GPU)
    python benchmarks/decoder.py --model-dir path/to/model        # a real decoder.json + weights

Configurations (random weights; speed does not depend on the values):

- ``tiny``: the layout of the reference test checkpoint (rates [10, 8, 6, 4, 5], 64 initial channels);
- ``released``: the released DiffRhythm 2 size (1536 initial channels, rates [10, 10, 8, 3, 2, 2],
  kernels [20, 20, 16, 7, 4, 4], resblock kernels [3, 7, 11], snakebeta, 9600 samples per frame).

Columns: ``RTF`` = compute seconds / audio seconds (below 1 is faster than real time);
``first audio`` = seconds from the start of ``decode_stream`` (latents arriving in blocks of 10 frames
with no delay) until the first audio chunk; ``peak MB`` = peak CUDA memory allocated during the row
on GPU, else the growth of the process's peak resident memory (Linux ``ru_maxrss``). On CPU the
released size runs only ``--frames-released-cpu`` frames (default 3: under one 20-frame window, so a
single pass, and the stream yields everything at the end).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dr2studio.models.bigvgan import (  # noqa: E402
    BigVGANDecoder,
    DecoderConfig,
    default_device_dtype,
    load_decoder,
)

CONFIGS = {
    "tiny": dict(upsample_rates=[10, 8, 6, 4, 5], upsample_kernel_sizes=[20, 16, 12, 8, 11],
                 upsample_initial_channel=64, resblock_kernel_sizes=[3, 7],
                 resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], use_tanh_at_final=False, use_bias_at_final=False),
    "released": dict(upsample_rates=[10, 10, 8, 3, 2, 2], upsample_kernel_sizes=[20, 20, 16, 7, 4, 4],
                     upsample_initial_channel=1536, resblock_kernel_sizes=[3, 7, 11],
                     resblock_dilation_sizes=[[1, 3, 5]] * 3, use_tanh_at_final=False, use_bias_at_final=False),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_start(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_mb(device: torch.device, start: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024  # KiB on Linux


def _blocks(latents: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    yield from latents.split(size, dim=1)


def bench(name: str, decoder: BigVGANDecoder, frames: int, max_batch: int, block: int) -> dict:
    device = decoder.device
    latents = torch.randn(1, frames, decoder.latent_dim, device=device, dtype=torch.float32)
    seconds = frames * decoder.hop_length / decoder.sample_rate
    with torch.inference_mode():
        decoder.decode(latents[:, : min(frames, 2)], max_batch=max_batch)  # warm-up (kernels, allocator)
        _sync(device)
        start_mem = _peak_start(device)
        t0 = time.perf_counter()
        full = decoder.decode(latents, max_batch=max_batch)
        _sync(device)
        t_decode = time.perf_counter() - t0
        mem_decode = _peak_mb(device, start_mem)

        start_mem = _peak_start(device)
        t0 = time.perf_counter()
        first = None
        parts = []
        for audio in decoder.decode_stream(_blocks(latents, block), max_batch=max_batch):
            _sync(device)
            if first is None:
                first = time.perf_counter() - t0
            parts.append(audio)
        t_stream = time.perf_counter() - t0
        mem_stream = _peak_mb(device, start_mem)
    err = (torch.cat(parts, -1) - full).abs().max().item()
    return dict(config=name, device=device.type, dtype=str(decoder.dtype).replace("torch.", ""), frames=frames,
                audio_s=seconds, decode_rtf=t_decode / seconds, stream_rtf=t_stream / seconds,
                first_s=first or 0.0, peak_mb=max(mem_decode, mem_stream), stream_err=err)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,released", help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--model-dir", type=Path, help="benchmark this decoder.json + weights instead")
    ap.add_argument("--frames", type=int, default=60, help="latent frames (5 per second) per row")
    ap.add_argument("--frames-released-cpu", type=int, default=3, help="frames for the released size on CPU")
    ap.add_argument("--block", type=int, default=10, help="frames per streamed block (the sampler's block)")
    ap.add_argument("--max-batch", type=int, default=8, help="chunk windows per generator pass")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = default_device_dtype(args.device, getattr(torch, args.dtype) if args.dtype else None)
    rows = []
    if args.model_dir:
        decoders = [(str(args.model_dir), load_decoder(args.model_dir, device=device, dtype=dtype))]
    else:
        decoders = []
        for name in args.configs.split(","):
            if name not in CONFIGS:
                ap.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
            torch.manual_seed(0)
            dec = BigVGANDecoder(DecoderConfig(**CONFIGS[name])).to(device=device, dtype=dtype).eval()
            decoders.append((name, dec.requires_grad_(False)))
    for name, dec in decoders:
        frames = args.frames
        if name == "released" and device.type == "cpu":
            frames = args.frames_released_cpu
        print(f"# {name}: {sum(p.numel() for p in dec.parameters()) / 1e6:.1f}M parameters, {frames} frames ...",
              file=sys.stderr, flush=True)
        rows.append(bench(name, dec, frames, args.max_batch, args.block))
        del dec
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"decoder benchmark on {gpu}; torch {torch.__version__}")
    head = ("config", "device", "dtype", "frames", "audio s", "decode RTF", "stream RTF", "first audio s",
            "peak MB", "stream-decode max err")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(f"{r['config']} | {r['device']} | {r['dtype']} | {r['frames']} | {r['audio_s']:.1f} | "
              f"{r['decode_rtf']:.3f} | {r['stream_rtf']:.3f} | {r['first_s']:.2f} | {r['peak_mb']:.0f} | "
              f"{r['stream_err']:.1e}")


if __name__ == "__main__":
    main()
