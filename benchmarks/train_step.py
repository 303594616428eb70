"""Training throughput of the block flow matching step, in latent frames per second.

    python benchmarks/train_step.py                    # tiny config (CPU or GPU) and ~1B config (GPU only)
    python benchmarks/train_step.py --configs tiny --batch 4 --frames 200 --steps 10
    python benchmarks/train_step.py --configs 1b --device cuda --frames 1050    # a full 210 s song

One step = the :class:`dr2studio.flow.block_fm.BlockFlowMatching` loss with stochastic block REPA
on a synthetic batch, backward, gradient clipping 0.5 and AdamW -- what ``training/block_fm.py``
does per worker, without Ray. Each configuration runs with and without activation checkpointing;
bf16 autocast on GPU. ``~1B`` is the released DiT size (dim 2048, depth 16, heads 16, ff_mult 4:
about 1.07 B parameters plus REPA projectors); it is skipped on CPU unless ``--force``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from dr2studio.flow.block_fm import BlockFlowMatching
from dr2studio.models.dit import DiT, DiTConfig

CONFIGS = {
    "tiny": DiTConfig(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=64, text_num_embeds=512, block_size=10,
                      repa_depth=1, repa_dims=[32]),
    "1b": DiTConfig(dim=2048, depth=16, heads=16, ff_mult=4, mel_dim=64, text_num_embeds=1000, block_size=10,
                    repa_depth=6, repa_dims=[1024, 768]),
}


def bench(name: str, cfg: DiTConfig, device: torch.device, *, batch: int, frames: int, tokens: int, steps: int,
          warmup: int, checkpointing: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = DiT(cfg).to(device)
    model.gradient_checkpointing = checkpointing
    objective = BlockFlowMatching(model).train()
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4, betas=(0.8, 0.9), weight_decay=1e-2)
    latents = torch.randn(batch, frames, cfg.mel_dim, device=device)
    lengths = torch.full((batch,), frames, device=device)
    toks = torch.randint(1, cfg.text_num_embeds, (batch, tokens), device=device)
    tlen = torch.full((batch,), tokens, device=device)
    style = torch.randn(batch, 512, device=device)
    repa = [torch.randn(batch, frames, d, device=device) for d in cfg.repa_dims] if cfg.repa_depth > 0 else None
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with amp:
            out = objective(latents, lengths, toks, tlen, style, repa)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 0.5)
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {"params_m": params, "step_s": dt, "frames_per_s": batch * frames / dt, "peak_gib": peak}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "1b"], choices=sorted(CONFIGS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=300, help="latent frames per song (5 per second)")
    p.add_argument("--tokens", type=int, default=300, help="lyric tokens per song")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--force", action="store_true", help="run the ~1B config on CPU too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} batch={args.batch} frames={args.frames} tokens={args.tokens} steps={args.steps}"
          f" autocast={'bf16' if device.type == 'cuda' else 'off'}")
    print(f"{'config':<6} {'params(M)':>10} {'act-ckpt':>8} {'step(s)':>9} {'frames/s':>10} {'peak GiB':>9}")
    for name in args.configs:
        if name == "1b" and device.type != "cuda" and not args.force:
            print(f"{name:<6} {'':>10} {'':>8} skipped: needs a GPU (or --force)")
            continue
        for ckpt in (False, True):
            r = bench(name, CONFIGS[name], device, batch=args.batch, frames=args.frames, tokens=args.tokens,
                      steps=args.steps, warmup=args.warmup, checkpointing=ckpt)
            print(f"{name:<6} {r['params_m']:>10.1f} {str(ckpt):>8} {r['step_s']:>9.3f} {r['frames_per_s']:>10.0f}"
                  f" {r['peak_gib']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
