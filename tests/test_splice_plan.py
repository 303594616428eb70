"""Splice plans on their own: the arithmetic of extend and infill (no model), and the apply functions.

Rates: the release decodes 48 kHz with 9600 samples a frame (5 frames/s); the shipped demo model 8 kHz
with a hop of 200 (40 frames/s), which at a producer's 44.1 kHz is 1102.5 samples a frame.
"""
from __future__ import annotations

import math

import pytest
import torch

from dr2studio.audio.io import resample
from dr2studio.audio.level import rms
from dr2studio.audio.splice import (
    CONTEXT_FRAMES,
    ExtendSplice,
    apply_extend,
    apply_infill,
    infill_latents,
    plan_extend,
    plan_infill,
    splice,
)

DEMO = dict(model_rate=8000, hop=200)  # 40 frames/s
RELEASE = dict(model_rate=48000, hop=9600)  # 5 frames/s


def _noise(channels: int, n: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    return scale * torch.randn(channels, n, generator=torch.Generator().manual_seed(seed))


# -- extend ------------------------------------------------------------------------------------------

def test_extend_plan_at_the_models_rate() -> None:
    plan = plan_extend(15 * 9600, 48000, latent_frames=15, seconds=2.0, crossfade=0.1, **RELEASE)
    assert (plan.prefix_frames, plan.joint, plan.fade, plan.splice) == (15, 15 * 9600, 4800, 15 * 9600 - 4800)
    assert plan.context_frames == 1 + CONTEXT_FRAMES and plan.first_frame == 15 - 9
    assert plan.offset == 6 * 9600 and plan.target == 25 * 9600 and plan.max_frames == 25
    assert plan.level_window == 3 * 48000 and plan.frame_rate == 5.0


def test_extend_plan_44k_song_on_an_8k_model() -> None:
    """1102.5 samples a frame: 6 s hold 240 whole frames exactly; the rest rounds on the song's timeline."""
    n = 6 * 44100
    plan = plan_extend(n, 44100, latent_frames=300, seconds=3.0, crossfade=0.5, **DEMO)
    assert plan.prefix_frames == 240 and plan.joint == n  # latents beyond the audio are not used
    assert plan.fade == 22050 and plan.splice == n - 22050
    assert plan.context_frames == 20 + CONTEXT_FRAMES
    assert plan.offset == round(212 * 1102.5) and plan.target == n + 3 * 44100 and plan.max_frames == 360
    # an odd number of frames ends on half a sample: the joint rounds (to even) and stays inside the input
    odd = plan_extend(1103, 44100, latent_frames=10, seconds=1.0, crossfade=0.0, **DEMO)
    assert odd.prefix_frames == 1 and odd.joint == 1102 and odd.splice == 1102 and odd.fade == 0
    assert odd.offset == 0 and odd.context_frames == 1


def test_extend_plan_drops_a_partial_last_frame_and_refuses_less_than_one() -> None:
    plan = plan_extend(3 * 9600 + 5000, 48000, latent_frames=4, seconds=1.0, crossfade=0.1, **RELEASE)
    assert plan.prefix_frames == 3 and plan.joint == 3 * 9600  # the new blocks start on a frame boundary
    with pytest.raises(ValueError, match="shorter than one latent frame"):
        plan_extend(1102, 44100, latent_frames=10, seconds=1.0, crossfade=0.1, **DEMO)
    with pytest.raises(ValueError, match="shorter than one latent frame"):
        plan_extend(48000, 48000, latent_frames=0, seconds=1.0, crossfade=0.1, **RELEASE)


def test_extend_plan_song_shorter_than_the_crossfade() -> None:
    plan = plan_extend(2 * 9600, 48000, latent_frames=2, seconds=1.0, crossfade=1.0, **RELEASE)
    assert plan.fade == plan.joint == 2 * 9600 and plan.splice == 0  # the fade is cut to the audio there is
    assert plan.context_frames == 2 and plan.offset == 0 and plan.first_frame == 0


def test_apply_extend_keeps_the_input_and_streams_what_it_returns() -> None:
    """Chunked (as decoded) and whole give the same output; before the splice it is the input, bit for bit."""
    n, sr = 6 * 44100, 44100
    plan = plan_extend(n, sr, latent_frames=240, seconds=3.0, crossfade=0.5, **DEMO)
    audio = _noise(2, n, 0)
    new = _noise(1, (plan.max_frames - plan.first_frame) * 200, 1, scale=0.05)  # model rate, from ``offset``
    stereo = lambda chunk: chunk.expand(2, -1).contiguous()  # noqa: E731
    whole, gain = apply_extend(plan, audio, new, channels=stereo)
    assert whole.shape == (2, plan.target)
    assert torch.equal(whole[:, : plan.splice], audio[:, : plan.splice])
    assert gain == pytest.approx(rms(audio[:, plan.splice - plan.level_window : plan.splice]) / 0.05, rel=0.05)
    streamed: list[torch.Tensor] = []
    joined = ExtendSplice(plan, audio, channels=stereo, on_audio=streamed.append)
    for piece in new.split(1000, dim=1):
        joined(piece)
    assert torch.equal(joined.finish(), whole) and joined.gain == gain
    assert torch.equal(torch.cat(streamed, dim=1), whole[:, plan.splice :])
    # without level matching the new audio is the resampled model audio itself after the crossfade
    raw, one = apply_extend(plan, audio, new, channels=stereo, match_level=False)
    at_rate = resample(new, 8000, sr)
    after = plan.joint - plan.offset
    assert one == 1.0 and torch.allclose(raw[:1, plan.joint :], at_rate[:, after : after + plan.target - plan.joint],
                                         atol=1e-6)


def test_apply_extend_without_new_audio_returns_the_input() -> None:
    plan = plan_extend(9600 * 3, 48000, latent_frames=3, seconds=1.0, crossfade=0.1, **RELEASE)
    audio = _noise(1, 9600 * 3, 2)
    out, _ = apply_extend(plan, audio, torch.zeros(1, 0))
    assert out is audio


# -- infill ------------------------------------------------------------------------------------------

def test_infill_plan_inside_the_song() -> None:
    plan = plan_infill(15 * 9600, 48000, latent_frames=15, start=1.1, end=2.3, crossfade=0.1, **RELEASE)
    assert (plan.start, plan.end, plan.fade_in, plan.fade_out) == (52800, 110400, 4800, 4800)
    assert plan.prefix_frames == 5 and plan.context_frames == 5 and plan.offset == 0
    assert plan.max_frames == math.ceil(115200 / 9600) + 1 and plan.keep_frames == 12
    assert plan.reference == (0, 48000) and plan.measure == (52800, 110400)


def test_infill_plan_from_the_start_matches_what_follows() -> None:
    plan = plan_infill(8 * 8000, 8000, latent_frames=320, start=0.0, end=1.5, crossfade=0.2, **DEMO)
    assert plan.fade_in == 0 and plan.prefix_frames == 0 and plan.context_frames == 0 and plan.offset == 0
    assert plan.fade_out == 1600 and plan.reference == (12000 + 1600, 12000 + 1600 + 24000)
    assert plan.max_frames == math.ceil(13600 / 200) + 1


def test_infill_plan_to_the_songs_end() -> None:
    n = 8 * 8000
    plan = plan_infill(n, 8000, latent_frames=320, start=6.0, end=8.0, crossfade=0.2, **DEMO)
    assert plan.end == n and plan.fade_out == 0 and plan.keep_frames == 320
    assert plan.max_frames == 321 and plan.prefix_frames == 240


def test_infill_plan_44k_on_an_8k_model_and_a_short_song() -> None:
    plan = plan_infill(6 * 44100, 44100, latent_frames=240, start=2.0, end=4.0, crossfade=0.5, **DEMO)
    assert (plan.start, plan.end, plan.fade_in, plan.fade_out) == (88200, 176400, 22050, 22050)
    assert plan.prefix_frames == 80 and plan.context_frames == 28 and plan.offset == round(52 * 1102.5)
    assert plan.max_frames == math.ceil(198450 * 40 / 44100) + 1 and plan.keep_frames == 160
    short = plan_infill(44100, 44100, latent_frames=40, start=0.2, end=0.6, crossfade=0.5, **DEMO)
    assert short.fade_in == 8820 and short.fade_out == 44100 - 26460  # both fades cut to the audio there is
    assert short.reference == (26460 + short.fade_out, 44100)  # nothing before: match what it leads into


def test_apply_infill_keeps_everything_outside_and_the_length() -> None:
    n, sr = 6 * 44100, 44100
    plan = plan_infill(n, sr, latent_frames=240, start=2.0, end=4.0, crossfade=0.5, **DEMO)
    audio = _noise(2, n, 3)
    new = _noise(1, (plan.max_frames - plan.first_frame) * 200, 4, scale=0.05)
    out, gain = apply_infill(plan, audio, new, channels=lambda c: c.expand(2, -1).contiguous())
    lo, hi = plan.start - plan.fade_in, plan.end + plan.fade_out
    assert out.shape == audio.shape
    assert torch.equal(out[:, :lo], audio[:, :lo]) and torch.equal(out[:, hi:], audio[:, hi:])
    assert gain == pytest.approx(0.3 / 0.05, rel=0.05)
    at_rate = gain * resample(new, 8000, sr)
    assert torch.allclose(out[:1, plan.start : plan.end], at_rate[:, plan.start - plan.offset : plan.end - plan.offset])
    same, one = apply_infill(plan, audio, new, match_level=False, channels=lambda c: c.expand(2, -1).contiguous())
    assert one == 1.0 and torch.equal(same[:, :lo], audio[:, :lo])
    # the plain splice is what apply does: new audio from ``start - fade_in``, the input again from ``end``
    head = splice(audio[:, :hi], resample(new, 8000, sr).expand(2, -1), at=lo, fade=plan.fade_in, offset=plan.offset)
    assert torch.equal(same, splice(head, audio, at=plan.end, fade=plan.fade_out))


def test_infill_latents_keep_the_new_frames_up_to_the_end() -> None:
    plan = plan_infill(8 * 8000, 8000, latent_frames=320, start=2.0, end=4.0, crossfade=0.1, **DEMO)
    old, new = torch.zeros(1, 320, 4), torch.ones(1, plan.max_frames, 4)
    got = infill_latents(plan, old, new)
    assert got.shape == old.shape and bool((got[:, :160] == 1).all()) and bool((got[:, 160:] == 0).all())
    shorter = infill_latents(plan, old, new[:, :100])  # a render that stopped early keeps the old frames after it
    assert shorter.shape == old.shape and bool((shorter[:, 100:] == 0).all())
