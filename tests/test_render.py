"""The sample/decode loop on its own (a tiny random model, no Studio, no songs): streaming, progress,
prefixes with decoded context, the end held off, and the same result the Studio's generate gives."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dr2studio.render as render_module
from dr2studio.checkpoints import load_dit
from dr2studio.flow.sampler import SamplerSettings
from dr2studio.lab.testing import build_tiny_model
from dr2studio.models.bigvgan import load_decoder
from dr2studio.render import Rendered, render

LYRICS = "[verse]\nhello world\nsing it loud\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def parts(model_dir: Path) -> tuple:
    dit = load_dit(model_dir)
    return dit, load_decoder(model_dir, device=dit.device)


@pytest.fixture(scope="module")
def style() -> torch.Tensor:
    return torch.randn(512, generator=torch.Generator().manual_seed(0))


TOKENS = torch.tensor([3, 7, 9, 12, 5, 8])


def _render(parts: tuple, style: torch.Tensor, max_frames: int, seed: int = 11, **kw) -> Rendered:
    dit, decoder = parts
    settings = kw.pop("settings", SamplerSettings(steps=2, eop_threshold=-1.0))
    return render(dit, decoder, TOKENS, style, max_frames, settings,
                  generator=torch.Generator("cpu").manual_seed(seed), **kw)


def test_render_streams_what_it_returns_and_reports_progress(parts: tuple, style: torch.Tensor) -> None:
    hop, block = parts[1].hop_length, parts[0].config.block_size
    events, chunks = [], []
    r = _render(parts, style, 15, progress=lambda *e: events.append(e), on_audio=chunks.append)
    assert r.latents.shape == (1, 15, parts[0].config.mel_dim) and r.audio.shape == (1, 15 * hop)
    assert r.first_frame == 0 and r.ended_at is None and r.dropped == 0 and r.seconds >= 0
    assert torch.equal(torch.cat(chunks, dim=1), r.audio)
    stages = [e[2] for e in events]
    assert stages.count("sample") == -(-15 // block) and stages.count("decode") == len(chunks)
    assert events[-1][:2] == (events[-1][1], events[-1][1]) and stages[-1] == "done"
    again = _render(parts, style, 15)
    assert torch.equal(again.latents, r.latents) and torch.equal(again.audio, r.audio)
    assert not torch.equal(_render(parts, style, 15, seed=12).latents, r.latents)  # randomness is the generator's


def test_render_continues_a_prefix_and_decodes_context_before_it(parts: tuple, style: torch.Tensor) -> None:
    hop = parts[1].hop_length
    whole = _render(parts, style, 15)
    prefix = whole.latents[:, :10]
    r = _render(parts, style, 20, seed=3, prefix=prefix, context_frames=4)
    assert r.first_frame == 6 and torch.equal(r.latents[:, :10], prefix) and r.latents.shape[1] == 20
    assert r.audio.shape == (1, (20 - 6) * hop)  # decoding starts four old frames before the new ones


def test_render_is_what_the_studio_generates(model_dir: Path, parts: tuple, style: torch.Tensor) -> None:
    """The Studio is a façade: its generate is this loop with the default end-of-song threshold."""
    from dr2studio.studio import Studio

    studio = Studio(parts[0], parts[1], model_dir)
    song = studio.generate(LYRICS, style, 3.0, steps=2, seed=11)
    tokens = studio.encode_lyrics(LYRICS)[0]
    dit, decoder = parts
    r = render(dit, decoder, tokens, style, 15, SamplerSettings(steps=2), generator=torch.Generator().manual_seed(11))
    assert torch.equal(r.audio, song.audio) and torch.equal(r.latents, song.latents)


def test_holding_the_end_drops_end_frames_and_samples_more(parts: tuple, style: torch.Tensor,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other frame the model samples is taken for an end-of-song frame: those are dropped, and
    sampling goes on until ``max_frames`` music frames are there."""
    hop = parts[1].hop_length
    marks = lambda frames: (torch.arange(frames.shape[0]) % 2).float()  # noqa: E731 - 0: an end frame
    monkeypatch.setattr(render_module, "eop_distance", marks)
    r = _render(parts, style, 12, hold_end=True, settings=SamplerSettings(steps=2))
    assert r.latents.shape[1] == 12 and r.ended_at is None and r.dropped >= 6
    assert r.audio.shape == (1, 12 * hop)
    monkeypatch.setattr(render_module, "eop_distance", lambda frames: torch.ones(frames.shape[0]))
    plain = _render(parts, style, 12, hold_end=True)
    assert plain.dropped == 0 and plain.latents.shape[1] == 12 and plain.ended_at is None


@pytest.mark.parametrize("hold_end", [False, True])
def test_sampling_ahead_in_a_worker_gives_the_plain_loops_result(parts: tuple, style: torch.Tensor, hold_end: bool,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlapped render (sampler a block ahead in a thread) is the interleaved one, bit for bit,
    with the same progress events in the same order."""
    def run(overlap: bool) -> tuple[Rendered, list, list]:
        monkeypatch.setattr(render_module, "overlap_decode", lambda dit: overlap)
        events, chunks = [], []
        r = _render(parts, style, 35, hold_end=hold_end, progress=lambda *e: events.append(e), on_audio=chunks.append)
        return r, events, chunks

    plain, plain_events, plain_chunks = run(False)
    ahead, ahead_events, ahead_chunks = run(True)
    assert torch.equal(plain.latents, ahead.latents) and torch.equal(plain.audio, ahead.audio)
    assert plain_events == ahead_events and len(plain_chunks) == len(ahead_chunks)


def test_a_cancelled_overlapped_render_leaves_no_worker_running(parts: tuple, style: torch.Tensor,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "overlap_decode", lambda dit: True)

    def cancel(done: int, total: int, stage: str) -> None:
        if stage == "decode":
            raise InterruptedError("the user pressed stop")

    from dr2studio import prefetch as prefetch_module

    with pytest.raises(InterruptedError):
        _render(parts, style, 60, progress=cancel)
    assert prefetch_module._slots._value == prefetch_module.WORKERS  # the worker is back: no sampling goes on


def test_small_models_on_a_multicore_cpu_overlap_and_large_ones_do_not(parts: tuple) -> None:
    import os

    from dr2studio.models.dit import DiT, DiTConfig

    cores = len(os.sched_getaffinity(0))
    assert render_module.overlap_decode(parts[0]) is (cores >= 2)
    big = DiT(DiTConfig(dim=512, depth=1, heads=8, ff_mult=1, mel_dim=8, text_num_embeds=16, block_size=10))
    assert big.device.type == "cpu" and render_module.overlap_decode(big) is False
