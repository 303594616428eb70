"""One command for a CUDA machine: parity, speed and memory of the released-size model, in one table.

    python benchmarks/gpu_check.py                  # on a CUDA machine (budget: under 8 minutes on one H100)
    python benchmarks/gpu_check.py --cuda-graphs    # also the torch.compile "reduce-overhead" rows (CUDA graphs)
    python benchmarks/gpu_check.py --dry-run        # CPU, tiny shapes, a few seconds (CI: the script cannot rot)

Rows:

- ``parity <dtype>``: the sampler on the reference checkpoint ``../shared/reference/dr2-tiny`` in float32,
  bfloat16 and float16 (fp16 with ``reference_numerics``, as the released GPU run) against its
  reference latents: relative error ``|out - ref| / |ref|`` (float32 goal 1e-4, as tests/test_sampler.py).
- ``1b <mode> <steps> steps <song>``: the released-size DiT (random weights at the shapes of
  ``training/configs/block_fm_1b.json``; speed does not depend on the values) sampling a 120 s and a 210 s
  song at 16 and 32 steps, cfg 2, 300 lyric tokens: seconds, RTF (seconds / song seconds) and peak GPU
  memory. Goals (issue 22): RTF <= 0.05 at 32 steps, a 210 s song within 4 GB.
- ``first audio``: sampler + released-size decoder (random weights) streaming, seconds to the first
  decoded chunk (goal: within 2 blocks, i.e. the decoder's first window).
- ``decoder``: released-size decoder throughput on a 30 s song (RTF).
- Modes for the per-block step: ``eager``; ``compile`` (each transformer block's projections, norms and
  MLP through ``torch.compile``, attention over the KV cache left eager); ``graphs`` (the same with
  ``mode="reduce-overhead"``: CUDA graphs, only with ``--cuda-graphs``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import MethodType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dr2studio.checkpoints import load_dit  # noqa: E402
from dr2studio.flow.sampler import BlockSampler, SamplerSettings, sample_latents  # noqa: E402
from dr2studio.models.bigvgan import BigVGANDecoder, DecoderConfig  # noqa: E402
from dr2studio.models.dit import AttentionContext, DecoderLayer, DiT, DiTConfig, apply_rotary  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference" / "dr2-tiny"
RELEASED = DiTConfig(dim=2048, depth=16, heads=16, ff_mult=4, mel_dim=64, text_num_embeds=1000, block_size=10,
                     repa_depth=6, repa_dims=[1024])
DRY = DiTConfig(dim=64, depth=2, heads=4, ff_mult=2, mel_dim=64, text_num_embeds=1000, block_size=10)
RELEASED_DECODER = DecoderConfig()  # the defaults are the released sizes
DRY_DECODER = DecoderConfig(upsample_rates=[10, 8, 6, 4, 5], upsample_kernel_sizes=[20, 16, 12, 8, 11],
                            upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])
FPS = 5  # latent frames per second of the release


# -- the per-block step through torch.compile -------------------------------------------------------
def compile_blocks(model: DiT, mode: str | None, backend: str = "inductor") -> None:
    """Route every transformer block through compiled pieces: q/k/v (norms, rotary) and o_proj + MLP.

    Attention over the KV cache stays eager: its key count grows every block, and the cache writes
    are Python-indexed, so only the fixed-shape work is compiled (one graph per call shape: lyrics,
    the null lyric token, b and 2b frames; the layers share it, their weights are graph inputs).
    With ``mode="reduce-overhead"`` each graph is replayed as a CUDA graph; a new step is marked at
    every DiT call (layer 0), so a graph's outputs are only reused after the call that read them.
    """
    graphs = mode == "reduce-overhead"
    # one compiled graph per (layer, call shape): lyrics, null lyric token, b and 2b frames
    limit = 8 * len(model.transformer_blocks) + 64
    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(limit, getattr(torch._dynamo.config, knob)))
    for layer in model.transformer_blocks:
        assert isinstance(layer, DecoderLayer)

        def pre(h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: DecoderLayer = layer) -> tuple[torch.Tensor, ...]:
            a = layer.self_attn
            x = layer.input_layernorm(h)
            b, n, _ = x.shape
            shape = (b, n, a.heads, a.head_dim)
            q = a.q_norm(a.q_proj(x).view(shape)).transpose(1, 2)
            k = a.k_norm(a.k_proj(x).view(shape)).transpose(1, 2)
            v = a.v_proj(x).view(shape).transpose(1, 2)
            return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

        def post(h: torch.Tensor, out: torch.Tensor, layer: DecoderLayer = layer) -> torch.Tensor:
            b, _, n, _ = out.shape
            h = h + layer.self_attn.o_proj(out.transpose(1, 2).reshape(b, n, -1))
            return h + layer.mlp(layer.post_attention_layernorm(h))

        cpre = torch.compile(pre, mode=mode, backend=backend, dynamic=False)
        cpost = torch.compile(post, mode=mode, backend=backend, dynamic=False)

        def forward(self: DecoderLayer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: AttentionContext,
                    index: int, cpre: Callable = cpre, cpost: Callable = cpost) -> torch.Tensor:
            if graphs and index == 0:
                torch.compiler.cudagraph_mark_step_begin()
            q, k, v = cpre(h, cos, sin)
            return cpost(h, ctx.attend(index, q, k, v))

        layer.forward = MethodType(forward, layer)  # type: ignore[method-assign]


# -- rows ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> str:
    return f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB" if device.type == "cuda" else "peak n/a (CPU)"


def random_dit(config: DiTConfig, device: torch.device, dtype: torch.dtype) -> DiT:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = DiT(DiTConfig.from_dict(config.to_dict()))
    model = model.to_empty(device=device).to(dtype)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def random_decoder(config: DecoderConfig, device: torch.device, dtype: torch.dtype) -> BigVGANDecoder:
    torch.manual_seed(0)
    dec = BigVGANDecoder(DecoderConfig.from_dict(config.to_dict()))
    for p in dec.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return dec.to(device=device, dtype=dtype).eval()


def parity_rows(device: torch.device, dtypes: list[torch.dtype]) -> list[tuple[str, str, str]]:
    if not (REFERENCE / "reference.pt").is_file():
        return [("parity", f"skipped: {REFERENCE} is absent", "")]
    ref = torch.load(REFERENCE / "reference.pt", weights_only=True)
    rows = []
    for dtype in dtypes:
        model = load_dit(REFERENCE, device=device, dtype=dtype)
        worst = 0.0
        for case in ref["sampler_cases"]:
            out = sample_latents(model, case["text"].to(device), case["style"].to(device), case["frames"], steps=case["steps"],
                                 cfg_strength=case["cfg"], noise=case["noise"].to(device),
                                 reference_numerics=dtype == torch.float16).float().cpu()
            exp = case["latents"][:, : case["frames"]]
            worst = max(worst, ((out - exp).norm() / exp.norm()).item())
        goal = "<= 1e-4" if dtype == torch.float32 else "(rounding of the dtype)"
        rows.append((f"parity {str(dtype).replace('torch.', '')} vs reference ({len(ref['sampler_cases'])} cases)",
                     f"rel err {worst:.1e}", goal))
        del model
    return rows


def sampler_row(model: DiT, seconds: float, steps: int, tokens: int, device: torch.device, label: str) -> tuple[str, str, str]:
    frames = int(seconds * FPS)
    g = torch.Generator(device=device).manual_seed(0)
    text = torch.randint(1, model.config.text_num_embeds, (1, tokens), device=device, generator=g)
    style = torch.randn(1, 512, device=device, generator=g)
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    s = BlockSampler(model, text, style, frames, SamplerSettings(steps=steps, eop_threshold=-1.0), generator=g)
    for _ in s.blocks():
        pass
    _sync(device)
    wall = time.perf_counter() - t0
    rtf = wall / seconds
    goal = "RTF <= 0.05" if steps == 32 else ""
    if seconds >= 210:
        goal += ("; " if goal else "") + "peak <= 4 GB"
    return (f"{label} {steps} steps {seconds:g} s", f"{wall:.2f} s, RTF {rtf:.4f}, {_peak(device)}", goal)


def first_audio_row(model: DiT, decoder: BigVGANDecoder, seconds: float, steps: int, device: torch.device) -> tuple[str, str, str]:
    from dr2studio.render import render

    g = torch.Generator(device=device).manual_seed(0)
    text = torch.randint(1, model.config.text_num_embeds, (300,), device=device, generator=g)
    style = torch.randn(512, device=device, generator=g)
    first: list[float] = []
    _sync(device)
    t0 = time.perf_counter()
    blocks = math.ceil(20 / model.config.block_size)  # the decoder's first window: 20 frames

    def on_audio(_chunk: torch.Tensor) -> None:
        if not first:
            _sync(device)
            first.append(time.perf_counter() - t0)

    render(model, decoder, text, style, int(seconds * FPS), SamplerSettings(steps=steps, eop_threshold=-1.0),
           generator=g, on_audio=on_audio)
    return (f"first audio, {steps} steps (sampler + decoder)", f"{first[0]:.2f} s", f"within {blocks} blocks")


def decoder_row(decoder: BigVGANDecoder, seconds: float, device: torch.device) -> tuple[str, str, str]:
    lat = torch.randn(1, int(seconds * FPS), decoder.latent_dim, device=device)
    decoder.decode(lat[:, :25])  # warm-up
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    decoder.decode(lat)
    _sync(device)
    wall = time.perf_counter() - t0
    return (f"decoder, {seconds:g} s song", f"{wall:.2f} s, RTF {wall / seconds:.4f}, {_peak(device)}", "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, seconds: checks the script itself")
    ap.add_argument("--cuda-graphs", action="store_true", help="also the CUDA-graph rows (torch.compile reduce-overhead)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="dtype of the 1b rows")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
        config, dec_config, songs, steps_list, tokens = DRY, DRY_DECODER, [4.0], [3], 20
        dtype, backend, parity_dtypes = torch.float32, "eager", [torch.float32, torch.bfloat16]
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run to check the script on CPU)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        config, dec_config, songs, steps_list, tokens = RELEASED, RELEASED_DECODER, [120.0, 210.0], [16, 32], 300
        dtype, backend, parity_dtypes = getattr(torch, args.dtype), "inductor", [torch.float32, torch.bfloat16, torch.float16]
    rows: list[tuple[str, str, str]] = []
    with torch.inference_mode():
        rows += parity_rows(device, parity_dtypes)
        model = random_dit(config, device, dtype)
        name = "1b" if not args.dry_run else "dry"
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append((f"{name} DiT parameters", f"{params:.1f}M ({str(dtype).replace('torch.', '')})", ""))
        sampler_row(model, 4.0, 4, tokens, device, "warm-up")
        for steps in steps_list:
            for seconds in songs:
                rows.append(sampler_row(model, seconds, steps, tokens, device, f"{name} eager"))
        decoder = random_decoder(dec_config, device, dtype)
        rows.append(first_audio_row(model, decoder, songs[0] / 4, steps_list[-1], device))
        rows.append(decoder_row(decoder, 30.0 if not args.dry_run else 2.0, device))
    modes = [] if args.no_compile else [("compile", None)] + ([("graphs", "reduce-overhead")] if args.cuda_graphs else [])
    for label, mode in modes:
        compiled = random_dit(config, device, dtype)
        compile_blocks(compiled, mode, backend)
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                sampler_row(compiled, 4.0, steps_list[-1], tokens, device, "warm-up")
                rows.append((f"{name} {label} warm-up (compilation)", f"{time.perf_counter() - t0:.1f} s", ""))
                steps = steps_list[-1]
                for seconds in songs:
                    rows.append(sampler_row(compiled, seconds, steps, tokens, device, f"{name} {label}"))
        except Exception as e:  # a check script: report the failing mode in the table, keep the other rows
            rows.append((f"{name} {label}", f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}", ""))
        del compiled
    total = time.perf_counter() - started
    rows.append(("total time of this check", f"{total:.0f} s", "< 480 s" if not args.dry_run else ""))
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device={dev_name} torch={torch.__version__} dry_run={args.dry_run}")
    head = ("measure", "value", "goal")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
