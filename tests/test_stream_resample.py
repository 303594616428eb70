"""Streaming resampling and level matching: the pieces extend hands on while it is still sampling."""
from __future__ import annotations

import math

import pytest
import torch
import torchaudio.functional as AF

from dr2studio.audio.level import LevelStream, match_gain, rms_db
from dr2studio.audio.stream_resample import StreamResampler


@pytest.mark.parametrize("orig, new", [(8000, 44100), (8000, 48000), (48000, 44100), (44100, 8000), (16000, 16000)])
@pytest.mark.parametrize("sizes", [[7, 300, 1, 2000], [12345], [100]])
def test_stream_resampler_equals_whole_signal_resampling(orig: int, new: int, sizes: list[int]) -> None:
    x = torch.randn(2, 12345, generator=torch.Generator().manual_seed(orig + new))
    full = AF.resample(x, orig, new)
    r, pieces, pos, i = StreamResampler(orig, new), [], 0, 0
    while pos < x.shape[1]:
        n = sizes[i % len(sizes)]
        pieces.append(r(x[:, pos : pos + n]))
        pos, i = pos + n, i + 1
    pieces.append(r.flush())
    out = torch.cat(pieces, dim=1)
    assert out.shape == full.shape
    torch.testing.assert_close(out, full, rtol=0, atol=1e-6)
    # it streams: only the filter's reach (plus one phase block) is left for the flush
    assert pieces[-1].shape[1] <= math.ceil((r._margin + r._o) * new / orig) + 1


def test_level_stream_matches_the_reference_and_holds_back_only_the_window() -> None:
    g = torch.Generator().manual_seed(0)
    reference = 0.3 * torch.randn(2, 3000, generator=g)
    new = 0.02 * torch.randn(2, 10000, generator=g)
    stream = LevelStream(reference, start=1000, window=3000, offset=0)
    first = stream(new[:, :2500])
    assert first.shape[1] == 0  # the measuring window [1000, 4000) is not complete yet
    second = stream(new[:, 2500:6000])
    rest = stream(new[:, 6000:])
    assert stream.flush() is None
    out = torch.cat([second, rest], dim=1)
    assert out.shape == new.shape
    assert rms_db(out[:, 1000:4000]) == pytest.approx(rms_db(reference), abs=1e-3)
    assert torch.allclose(out, new * stream.gain)


def test_level_stream_short_input_and_off_switch() -> None:
    reference, new = 0.1 * torch.ones(1, 100), 0.05 * torch.ones(1, 50)
    stream = LevelStream(reference, start=10, window=1000)
    assert stream(new).shape[1] == 0
    out = stream.flush()
    assert out is not None and torch.allclose(out, 0.1 * torch.ones(1, 50))
    off = LevelStream(reference, start=10, window=1000, enabled=False)
    assert torch.equal(off(new), new) and off.gain == 1.0


def test_match_gain_leaves_silence_alone_and_is_bounded() -> None:
    assert match_gain(torch.zeros(1, 100), torch.ones(1, 100)) == 1.0  # matching to silence would mute the new audio
    assert match_gain(torch.ones(1, 100), torch.zeros(1, 100)) == 1.0
    assert 20 * math.log10(match_gain(torch.ones(1, 100), 1e-2 * torch.ones(1, 100))) == pytest.approx(30.0)
