"""Sampler speed: seconds per block at the start and end of a long song, real-time factor, memory.

    python benchmarks/sampler.py                       # tiny + 35.6M configs on this machine
    python benchmarks/sampler.py --configs 1b --seconds 210   # the released size (GPU)
    python benchmarks/sampler.py --configs 35m --baseline     # also time a re-concatenating cache

The ``--baseline`` row swaps in a cache that re-concatenates the whole history at every call,
as the reference does, so both can be compared on the same machine.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dr2studio.checkpoints import default_device, default_dtype  # noqa: E402
from dr2studio.flow import sampler as sampler_mod  # noqa: E402
from dr2studio.flow.kv_cache import BlockKVCache  # noqa: E402
from dr2studio.flow.sampler import BlockSampler, SamplerSettings  # noqa: E402
from dr2studio.models.dit import DiT, DiTConfig  # noqa: E402

CONFIGS = {
    "tiny": DiTConfig(dim=96, depth=3, heads=4, ff_mult=2, mel_dim=64, text_num_embeds=512, block_size=10),
    "35m": DiTConfig(dim=512, depth=8, heads=8, ff_mult=4, mel_dim=64, text_num_embeds=512, block_size=10),
    "1b": DiTConfig(dim=2048, depth=16, heads=16, ff_mult=4, mel_dim=64, text_num_embeds=1000, block_size=10),
}


class ConcatCache(BlockKVCache):
    """The reference's strategy: concatenate stored history and new keys at every call."""

    def attend(self, layer, q, k, v):  # type: ignore[override]
        if self._mode != "block":  # lyrics: written once, nothing to re-concatenate
            return super().attend(layer, q, k, v)
        start = self.text_len + self.length
        hist_k = self.k[layer][:, :, :start].clone()
        hist_v = self.v[layer][:, :, :start].clone()
        keys, values = torch.cat((hist_k, k), dim=2), torch.cat((hist_v, v), dim=2)
        self.k[layer][:, :, start : start + self._n] = k
        self.v[layer][:, :, start : start + self._n] = v
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self._mask)


def _rss_mb() -> float:
    """Resident memory of this process now (Linux), MB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def _peak_mb(device: torch.device, rss_before: float) -> float:
    """GPU: peak allocated. CPU: peak resident memory minus what the process held before the model."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before


def run(name: str, seconds: float, steps: int, cfg: float, tokens: int, device: torch.device, dtype: torch.dtype, baseline: bool,
        separate_store: bool = False, max_blocks: int | None = None) -> dict:
    config = CONFIGS[name]
    rss_before = _rss_mb()
    torch.manual_seed(0)
    with torch.device("meta"):
        model = DiT(config)
    model = model.to(dtype).to_empty(device=device)  # never materialise float32 weights of a bf16 run
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model = model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    frames = int(seconds * 5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    original = sampler_mod.BlockKVCache
    if baseline:
        sampler_mod.BlockKVCache = ConcatCache
    BlockSampler.fuse_store = not (baseline or separate_store)
    try:
        s = BlockSampler(model, torch.randint(1, 500, (1, tokens)), torch.randn(1, 512), frames,
                         SamplerSettings(steps=steps, cfg_strength=cfg, eop_threshold=-1.0),
                         generator=torch.Generator(device=device).manual_seed(0) if device.type == "cuda" else torch.Generator().manual_seed(0))
        times = []
        t0 = time.perf_counter()
        last = t0
        for _ in s.blocks():
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if max_blocks is not None and len(times) >= max_blocks:
                break  # the cache was sized for the whole song: the memory peak is already reached
        total = time.perf_counter() - t0
    finally:
        sampler_mod.BlockKVCache = original
        BlockSampler.fuse_store = True
    k = max(1, min(3, len(times) // 4))
    first = sum(times[1 : 1 + k]) / k if len(times) > k else times[0]  # skip block 0 (includes lyrics pass)
    end = sum(times[-k:]) / k
    label = " (concat cache)" if baseline else " (separate store)" if separate_store else ""
    return dict(config=name + label, params=f"{params:.1f}M", device=str(device),
                dtype=str(dtype).replace("torch.", ""), song_s=seconds, total_s=total, first_block_s=first,
                last_block_s=end, growth=end / first, rtf=total / seconds if max_blocks is None else float("nan"), peak_mb=_peak_mb(device, rss_before))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "35m"], choices=list(CONFIGS))
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, bf16 on GPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--baseline", action="store_true", help="also time a re-concatenating cache (the reference's strategy)")
    ap.add_argument("--max-blocks", type=int, default=None,
                    help="stop after this many blocks (the KV cache is still sized for the whole song): "
                         "peak memory of a long song on a slow device; rtf is then not reported")
    ap.add_argument("--separate-store", action="store_true",
                    help="also time separate store passes (a forward per finished block, as the reference does)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device(args.device)
    dtype = default_dtype(device, args.dtype)
    rows = []
    for name in args.configs:
        rows.append(run(name, args.seconds, args.steps, args.cfg, args.tokens, device, dtype, False, max_blocks=args.max_blocks))
        if args.separate_store:
            rows.append(run(name, args.seconds, args.steps, args.cfg, args.tokens, device, dtype, False, True))
        if args.baseline:
            rows.append(run(name, args.seconds, args.steps, args.cfg, args.tokens, device, dtype, True))
    cols = ["config", "params", "device", "dtype", "song_s", "total_s", "first_block_s", "last_block_s", "growth", "rtf", "peak_mb"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    print(f"steps={args.steps} cfg={args.cfg} lyric tokens={args.tokens} threads={torch.get_num_threads()}")
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(fmt(r[c]).ljust(w) for c, w in zip(cols, widths)))


if __name__ == "__main__":
    main()
