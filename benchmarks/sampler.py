"""Sampler speed in one table: ours vs an official-style sampler, growth with song length, demo RTF, bf16, equality.

    python benchmarks/sampler.py                         # the whole table (several minutes on 2 cores)
    python benchmarks/sampler.py --quick                 # shorter songs, same rows (smoke run)
    python benchmarks/sampler.py --threads 1             # one intra-op thread (small models, busy machines)
    PYTHONPATH=DEPS python benchmarks/sampler.py --official DIFFRHYTHM2_CHECKOUT   # + the released sampler itself

Rows (one run, one machine, one table; every time is measured here, nothing is copied in):

- ``35m ours`` / ``35m official-style``: the 35.6M-parameter configuration, a ``--seconds`` song (120 s:
  60 blocks), 8 steps, cfg 2, 300 lyric tokens, float32, the same noise. The official-style sampler is
  built like the released ``sample_block_cache`` (spec §3): a conditional and an unconditional cache
  whose history is re-concatenated at every call, one DiT forward per guidance branch, an all-True
  attention mask, a separate store pass per branch after each block. ``growth`` = mean seconds of the
  last 3 blocks / of blocks 1-3 (block 0 also caches the lyrics). The official-style sampler runs on our
  lean DiT module, so it measures the sampling strategy, not the released code's own overhead.
- ``weights not packed``: ours with plain ``F.linear`` instead of the float32 weights packed once per song
  (``dr2studio.models.packed_linear``), same song.
- ``released sampler`` (with ``--official DIR``): the released ``CFM.sample_block_cache`` itself, imported from
  a checkout of the official repository, on the same weights (its DiT loads our state dict with strict keys)
  and the same noise: the comparison issue 22 states its 3x goal against.
- ``demo``: the shipped demo model, a 20 s song at 32 steps with its tempo clock: sampler alone and the
  whole render (sampler + streaming decoder, as ``dr2studio generate``); ``first audio`` = seconds from
  the render call to the first decoded chunk.
- ``bf16``: the same runs with bfloat16 weights (the ODE state stays float32), and the max / mean
  absolute difference of the latents to the float32 run.
- ``equal to before``: the same inputs through the sampler of git revision ``--before-rev`` (the tree
  before the speed work, run in a subprocess from ``git archive``); max absolute difference.

``wall s`` is elapsed time, ``cpu s`` the process CPU time (all threads): on a shared machine the
wall time includes waiting for a core, the CPU time does not. Goals are the ones of issue 22.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dr2studio.checkpoints import load_dit  # noqa: E402
from dr2studio.demo import demo_model_dir  # noqa: E402
from dr2studio.flow.sampler import BlockSampler, SamplerSettings  # noqa: E402
from dr2studio.models.dit import DiT, DiTConfig, rotary_tables  # noqa: E402

CONFIGS = {
    "tiny": DiTConfig(dim=96, depth=3, heads=4, ff_mult=2, mel_dim=64, text_num_embeds=512, block_size=10),
    "35m": DiTConfig(dim=512, depth=8, heads=8, ff_mult=4, mel_dim=64, text_num_embeds=512, block_size=10),
}
DEFAULT_BEFORE_REV = "aaa420f"  # the last commit before the issue-22 speed work
DEMO_FPS = 40
DEMO_BEATS_PER_FRAME = 120 / 60 / DEMO_FPS


class Clock:
    """Wall and process-CPU seconds since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


# -- the official-style sampler ------------------------------------------------------------------
class ConcatKV:
    """One guidance branch's cache as the reference keeps it: every call concatenates history and new keys."""

    def __init__(self, layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers
        self.store = False

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        hk, hv = self.k[layer], self.v[layer]
        keys = k if hk is None else torch.cat((hk, k), dim=2)
        values = v if hv is None else torch.cat((hv, v), dim=2)
        if self.store:
            self.k[layer], self.v[layer] = keys, values
        mask = torch.ones(1, 1, q.shape[2], keys.shape[2], dtype=torch.bool, device=q.device)  # all True, as the release
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def official_style(model: DiT, tokens: torch.Tensor, style: torch.Tensor, frames: int, steps: int, cfg: float,
                   noise: torch.Tensor, block_times: list[float] | None = None) -> torch.Tensor:
    """``[1, blocks*b, M]`` latents sampled the way the released sampler does (see the module docstring)."""
    c = model.config
    b, n_text, dev, dt = c.block_size, tokens.shape[1], model.device, model.dtype
    null_style = torch.zeros_like(style)
    caches = (ConcatKV(c.depth), ConcatKV(c.depth))
    pos = rotary_tables(torch.arange(n_text + frames + b, device=dev)[None], c.head_dim, dt)
    rope = lambda s, n: (pos[0][:, :, s : s + n], pos[1][:, :, s : s + n])  # noqa: E731
    t_text = torch.full((1, n_text), -1.0, device=dev)
    for kv, tok, st in zip(caches, (tokens, torch.zeros_like(tokens)), (style, null_style)):
        kv.store = True
        model(model.embed_text(tok), t_text, st, rope(0, n_text), kv, need_output=False)
        kv.store = False
    grid = torch.linspace(0, 1, steps, device=dev)
    clean = 0
    out = []
    last = time.perf_counter()
    for i in range(math.ceil(frames / b)):
        x = noise[:, i * b : (i + 1) * b].to(dev)
        for k in range(steps - 1):
            e = model.embed_latents(x)
            t = grid[k].expand(1, b)
            v_c = model(e, t, style, rope(clean, b), caches[0]).float()
            v_u = model(e, t, null_style, rope(clean, b), caches[1]).float()
            x = x + (grid[k + 1] - grid[k]) * (v_c + (v_c - v_u) * cfg)
        e = model.embed_latents(x)
        for kv, st in zip(caches, (style, null_style)):
            kv.store = True
            model(e, torch.ones(1, b, device=dev), st, rope(clean, b), kv, need_output=False)
            kv.store = False
        clean += b
        out.append(x)
        if block_times is not None:
            now = time.perf_counter()
            block_times.append(now - last)
            last = now
    return torch.cat(out, dim=1)


# -- the released sampler itself (optional: a checkout of the official repository) ----------------
def released_sampler(repo: Path, model: DiT, tokens: torch.Tensor, style: torch.Tensor, frames: int, steps: int,
                     cfg: float, noise: torch.Tensor) -> tuple[torch.Tensor, float, float] | str:
    """(latents, wall s, cpu s) of the released ``CFM.sample_block_cache`` imported from ``repo`` (a checkout of
    github.com/xiaomi-research/diffrhythm2; it needs transformers 4.47 and torchdiffeq importable), with ``model``'s
    weights and the same noise block by block. Nothing of it is copied here: it runs from the user's checkout.
    A reason string when it cannot run.
    """
    sys.path.insert(0, str(repo))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its solver settings
            from diffrhythm2.backbones.dit import DiT as ReleasedDiT
            from diffrhythm2.cfm import CFM
            c = model.config
            net = ReleasedDiT(dim=c.dim, depth=c.depth, heads=c.heads, ff_mult=c.ff_mult, mel_dim=c.mel_dim,
                              text_num_embeds=c.text_num_embeds)
            net.load_state_dict(model.state_dict(), strict=True)
            cfm = CFM(net, num_channels=c.mel_dim, block_size=c.block_size).to(model.dtype).eval()
    except Exception as e:  # noqa: BLE001 - any failure to import or build is reported in the row
        return f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    finally:
        sys.path.remove(str(repo))

    def run(n: int) -> torch.Tensor:
        blocks = iter(noise.split(c.block_size, dim=1))
        real_randn, real_half = torch.randn, torch.Tensor.half
        torch.randn = lambda *a, **k: next(blocks).clone()  # its per-block noise, in order: ours
        # it casts its lyric/cache time grids with .half() (the release runs fp16 on a GPU): here they take the
        # model's dtype instead, so it runs in float32 on a CPU like ours; nothing else of it is changed
        torch.Tensor.half = lambda self, *a, **k: self.to(model.dtype)
        try:
            return cfm.sample_block_cache(tokens, n, style, steps=steps, cfg_strength=cfg, process_bar=False)
        finally:
            torch.randn, torch.Tensor.half = real_randn, real_half

    run(20)  # warm-up, as ours gets
    clock = Clock()
    out = run(frames)
    wall, cpu = clock.lap()
    return out, wall, cpu


# -- helpers -------------------------------------------------------------------------------------
def random_dit(name: str, dtype: torch.dtype = torch.float32) -> DiT:
    """A DiT of configuration ``name`` with seeded random weights (speed does not depend on the values)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = DiT(CONFIGS[name])
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model.to(dtype).eval()


def ours(model: DiT, tokens: torch.Tensor, style: torch.Tensor, frames: int, steps: int, cfg: float,
         noise: torch.Tensor | None = None, block_times: list[float] | None = None, **kw) -> torch.Tensor:
    s = BlockSampler(model, tokens, style, frames, SamplerSettings(steps=steps, cfg_strength=cfg, eop_threshold=-1.0),
                     noise=noise, generator=torch.Generator().manual_seed(0), **kw)
    last = time.perf_counter()
    for _ in s.blocks():
        if block_times is not None:
            now = time.perf_counter()
            block_times.append(now - last)
            last = now
    return s.latents


def growth(times: list[float]) -> float:
    k = 3
    return (sum(times[-k:]) / k) / (sum(times[1 : 1 + k]) / k)


def demo_render(dit: DiT, decoder, tokens: torch.Tensor, style: torch.Tensor, seconds: float, steps: int) -> tuple[float, float, float]:
    """(wall s, cpu s, first audio s) of a whole render of the demo model."""
    from dr2studio.render import render

    first: list[float] = []
    clock = Clock()
    render(dit, decoder, tokens[0], style[0], int(seconds * DEMO_FPS),
           SamplerSettings(steps=steps, eop_threshold=-1.0), generator=torch.Generator().manual_seed(0), tempo=120.0,
           on_audio=lambda _c: first.append(clock.lap()[0]) if not first else None)
    wall, cpu = clock.lap()
    return wall, cpu, first[0] if first else float("nan")


BEFORE_SCRIPT = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from dr2studio.flow.sampler import sample_latents
from dr2studio.checkpoints import load_dit
inp = torch.load(sys.argv[1], weights_only=True)
out = {}
dit = load_dit(inp["demo_dir"])
out["demo"] = sample_latents(dit, inp["tokens"], inp["style"], inp["demo_frames"], steps=32, noise=inp["demo_noise"],
                             eop_threshold=-1.0, beats_per_frame=inp["bpf"])
torch.manual_seed(0)
from dr2studio.models.dit import DiT, DiTConfig
m = DiT(DiTConfig(**inp["tiny_cfg"])).eval()
m.load_state_dict(inp["tiny_state"])
out["tiny"] = sample_latents(m, inp["tiny_tokens"], inp["tiny_style"], inp["tiny_frames"], steps=8, noise=inp["tiny_noise"],
                             prefix=inp["tiny_prefix"], eop_threshold=-1.0)
torch.save(out, sys.argv[1] + ".out")
"""


def equal_to_before(rev: str, demo: DiT, threads: int) -> tuple[float, float] | str:
    """Max abs difference (demo 5 s at 32 steps; a batch of two with a prefix on a tiny random DiT) to revision ``rev``."""
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "dr2studio"], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return f"n/a (git archive {rev}: {e})"
    g = torch.Generator().manual_seed(1)
    tiny = random_dit("tiny")
    inp = dict(demo_dir=str(demo_model_dir()), tokens=torch.randint(1, 500, (1, 60), generator=g),
               style=torch.randn(1, 512, generator=g), demo_frames=200, demo_noise=torch.randn(1, 200, 32, generator=g),
               bpf=torch.tensor([DEMO_BEATS_PER_FRAME]), tiny_cfg=CONFIGS["tiny"].to_dict(), tiny_state=tiny.state_dict(),
               tiny_tokens=torch.randint(1, 500, (2, 30), generator=g), tiny_style=torch.randn(2, 512, generator=g),
               tiny_frames=100, tiny_noise=torch.randn(2, 90, 64, generator=g), tiny_prefix=torch.randn(2, 15, 64, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(tmp, filter="data")
        # the package data (demo weights) is read from this tree: only the code comes from `rev`
        path = Path(tmp) / "inputs.pt"
        torch.save(inp, path)
        env = dict(os.environ, PYTHONPATH=tmp)
        r = subprocess.run([sys.executable, "-c", BEFORE_SCRIPT, str(path), str(threads)], cwd=tmp, env=env,
                           capture_output=True, text=True)
        if r.returncode:
            return f"n/a (revision {rev} failed: {r.stderr.strip().splitlines()[-1:]})"
        before = torch.load(str(path) + ".out", weights_only=True)
    with torch.inference_mode():
        now_demo = ours(demo, inp["tokens"], inp["style"], 200, 32, 2.0, noise=inp["demo_noise"], beats_per_frame=inp["bpf"])
        s = BlockSampler(tiny, inp["tiny_tokens"], inp["tiny_style"], 100, SamplerSettings(steps=8, eop_threshold=-1.0),
                         noise=inp["tiny_noise"], prefix=inp["tiny_prefix"])
        for _ in s.blocks():
            pass
    return (now_demo - before["demo"]).abs().max().item(), (s.latents - before["tiny"]).abs().max().item()


# -- the table -----------------------------------------------------------------------------------
Row = tuple[str, str, str, str]  # what, measured, goal, met


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="song length of the 35m rows")
    ap.add_argument("--demo-seconds", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=8, help="steps of the 35m rows")
    ap.add_argument("--demo-steps", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--before-rev", default=DEFAULT_BEFORE_REV)
    ap.add_argument("--official", type=Path, default=None,
                    help="a checkout of the official DiffRhythm 2 repository: adds rows for its own sampler (needs "
                         "transformers 4.47 and torchdiffeq importable, e.g. on PYTHONPATH)")
    ap.add_argument("--quick", action="store_true", help="30 s songs for the 35m rows, 10 s demo (a smoke run)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["35m", "demo", "bf16", "before"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seconds, args.demo_seconds = 30.0, 10.0
    rows: list[Row] = []
    g = torch.Generator().manual_seed(0)

    with torch.inference_mode():
        if "35m" not in args.skip:
            model = random_dit("35m")
            frames = int(args.seconds * 5)
            tokens, style = torch.randint(1, 500, (1, args.tokens), generator=g), torch.randn(1, 512, generator=g)
            noise = torch.randn(1, math.ceil(frames / 10) * 10, 64, generator=g)
            ours(model, tokens, style, 20, args.steps, 2.0, noise=noise)  # warm-up
            t_ours: list[float] = []
            clock = Clock()
            lat_ours = ours(model, tokens, style, frames, args.steps, 2.0, noise=noise, block_times=t_ours)
            w_ours, c_ours = clock.lap()
            t_off: list[float] = []
            clock = Clock()
            lat_off = official_style(model, tokens, style, frames, args.steps, 2.0, noise, block_times=t_off)
            w_off, c_off = clock.lap()
            diff = (lat_ours - lat_off[:, :frames]).abs().max().item()
            BlockSampler.pack_weights = False  # ours with plain F.linear: what the packed weights gain
            clock = Clock()
            lat_plain = ours(model, tokens, style, frames, args.steps, 2.0, noise=noise)
            w_plain, c_plain = clock.lap()
            BlockSampler.pack_weights = True
            sec = f"{args.seconds:g} s"
            rows += [
                (f"35m ours, {sec}, {args.steps} steps (wall / cpu s)", f"{w_ours:.1f} / {c_ours:.1f}", "", "-"),
                ("35m official-style, same song (wall / cpu s)", f"{w_off:.1f} / {c_off:.1f}", "", "-"),
                ("35m speed-up vs official-style (wall, cpu)", f"{w_off / w_ours:.2f}x, {c_off / c_ours:.2f}x", ">= 3x",
                 _met(w_off / w_ours >= 3)),
                ("35m ours, weights not packed (wall / cpu s)", f"{w_plain:.1f} / {c_plain:.1f}", "", "-"),
                ("35m packed weights: speed-up (wall), max |diff|",
                 f"{w_plain / w_ours:.2f}x, {(lat_ours - lat_plain).abs().max().item():.1e}", "", "-"),
                ("35m per-block growth first->last, ours", f"{growth(t_ours):.2f}", "<= 1.3", _met(growth(t_ours) <= 1.3)),
                ("35m per-block growth, official-style", f"{growth(t_off):.2f}", "", "-"),
                ("35m ours vs official-style, max |diff|", f"{diff:.1e}", "<= 1e-5 x max|latent|",
                 _met(diff <= 1e-5 * lat_off.abs().max().item())),
            ]
            w_rel: float | None = None
            if args.official is not None:
                got = released_sampler(args.official, model, tokens, style, frames, args.steps, 2.0, noise)
                if isinstance(got, str):
                    rows.append(("35m released sampler (--official)", got, "", "-"))
                else:
                    lat_rel, w_rel, c_rel = got
                    n = min(frames, lat_rel.shape[1])
                    d_rel = (lat_ours[:, :n] - lat_rel[:, :n]).abs().max().item()
                    rows += [
                        ("35m released sampler, same song (wall / cpu s)", f"{w_rel:.1f} / {c_rel:.1f}", "", "-"),
                        ("35m speed-up vs the released sampler (wall, cpu)", f"{w_rel / w_ours:.2f}x, {c_rel / c_ours:.2f}x",
                         ">= 3x", _met(w_rel / w_ours >= 3)),
                        ("35m ours vs the released sampler, max |diff|", f"{d_rel:.1e} ({n} frames)",
                         "<= 1e-5 x max|latent|", _met(d_rel <= 1e-5 * lat_rel.abs().max().item())),
                    ]
            if "bf16" not in args.skip:
                bf = random_dit("35m", torch.bfloat16)  # the float32 weights rounded to bf16
                ours(bf, tokens, style, 20, args.steps, 2.0, noise=noise)
                clock = Clock()
                lat_bf = ours(bf, tokens, style, frames, args.steps, 2.0, noise=noise)
                w_bf, c_bf = clock.lap()
                d = (lat_bf - lat_ours).abs()
                rows += [("35m ours bf16, same song (wall / cpu s)", f"{w_bf:.1f} / {c_bf:.1f}", "", "-"),
                         ("35m bf16 speed-up vs ours float32, vs official-style float32 (wall)",
                          f"{w_ours / w_bf:.2f}x, {w_off / w_bf:.2f}x", "", "-"),
                         *([("35m bf16 speed-up vs the released sampler float32 (wall)", f"{w_rel / w_bf:.2f}x", "", "-")]
                           if w_rel is not None else []),
                         ("35m bf16 - float32 latents, max / mean |diff|", f"{d.max().item():.3f} / {d.mean().item():.4f}",
                          f"(latents' std {lat_ours.std().item():.2f})", "-")]
            del model

        demo = load_dit(demo_model_dir())
        if "demo" not in args.skip:
            from dr2studio.models.bigvgan import load_decoder

            decoder = load_decoder(demo_model_dir())
            frames = int(args.demo_seconds * DEMO_FPS)
            tokens, style = torch.randint(1, 500, (1, 120), generator=g), torch.randn(1, 512, generator=g)
            bpf = torch.tensor([DEMO_BEATS_PER_FRAME])
            demo_render(demo, decoder, tokens, style, 2.0, args.demo_steps)  # warm-up
            clock = Clock()
            lat_f = ours(demo, tokens, style, frames, args.demo_steps, 2.0, beats_per_frame=bpf)
            w_s, c_s = clock.lap()
            w_r, c_r, first = demo_render(demo, decoder, tokens, style, args.demo_seconds, args.demo_steps)
            sec = args.demo_seconds
            rows += [
                (f"demo sampler, {sec:g} s, {args.demo_steps} steps (wall / cpu s)", f"{w_s:.2f} / {c_s:.2f}", "", "-"),
                ("demo sampler RTF (wall, cpu)", f"{w_s / sec:.3f}, {c_s / sec:.3f}", "", "-"),
                ("demo render RTF, sampler + decoder (wall, cpu)", f"{w_r / sec:.3f}, {c_r / sec:.3f}", "<= 0.15",
                 _met(w_r / sec <= 0.15)),
                ("demo time to first audio (wall s)", f"{first:.2f}", "<= 0.3", _met(first <= 0.3)),
            ]
            if "bf16" not in args.skip:
                bf = load_dit(demo_model_dir(), dtype=torch.bfloat16)
                ours(bf, tokens, style, 40, args.demo_steps, 2.0, beats_per_frame=bpf)
                clock = Clock()
                lat_bf = ours(bf, tokens, style, frames, args.demo_steps, 2.0, beats_per_frame=bpf)
                w_b, c_b = clock.lap()
                d = (lat_bf - lat_f).abs()
                rows += [("demo sampler bf16 (wall / cpu s)", f"{w_b:.2f} / {c_b:.2f} ({c_s / c_b:.2f}x cpu)", "", "-"),
                         ("demo bf16 - float32 latents, max / mean |diff|", f"{d.max().item():.3f} / {d.mean().item():.4f}",
                          f"(latents' std {lat_f.std().item():.2f})", "-")]

    if "before" not in args.skip:
        eq = equal_to_before(args.before_rev, demo, torch.get_num_threads())
        if isinstance(eq, str):
            rows.append((f"float32 equal to {args.before_rev}", eq, "<= 1e-5", "-"))
        else:
            rows += [(f"float32 vs {args.before_rev}: demo 5 s, max |diff|", f"{eq[0]:.1e}", "<= 1e-5", _met(eq[0] <= 1e-5)),
                     (f"float32 vs {args.before_rev}: tiny, batch 2 + prefix", f"{eq[1]:.1e}", "<= 1e-5", _met(eq[1] <= 1e-5))]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads={torch.get_num_threads()} cpus={os.cpu_count()} load(1 min)={load:.1f} torch={torch.__version__}")
    head = ("measure", "value", "goal", "met")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
