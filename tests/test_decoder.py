"""BigVGAN decoder: released-checkpoint loading, reference parity, chunk schedule, streaming."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dr2studio.config import ConfigError
from dr2studio.models.bigvgan import DecoderConfig, load_decoder, save_decoder
from dr2studio.vae.checkpoint_io import CheckpointError, read_state_dict
from dr2studio.vae.chunking import plan_segments, stable_frames
from vae_helpers import micro_config, micro_decoder, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# -- released layout and the reference -----------------------------------------------------------------

def test_matches_reference_chunked_decode(tiny_ref_dir: Path, tiny_reference: dict) -> None:
    dec = load_decoder(tiny_ref_dir, device="cpu")
    latents = tiny_reference["decoder_latents"].transpose(1, 2)  # reference is channels-first
    with torch.inference_mode():
        audio = dec.decode(latents)
    assert audio.shape == (1, 1, 47 * 9600) and audio.dtype == torch.float32
    assert rel_err(audio, tiny_reference["decoder_audio"]) <= 1e-4


def test_matches_reference_single_pass_under_one_chunk(tiny_ref_dir: Path, tiny_reference: dict) -> None:
    dec = load_decoder(tiny_ref_dir, device="cpu")
    with torch.inference_mode():
        audio = dec.decode(tiny_reference["decoder_short_latents"].transpose(1, 2))
    assert audio.shape == (1, 1, 12 * 9600)
    assert rel_err(audio, tiny_reference["decoder_short_audio"]) <= 1e-4


def test_reference_stream_two_blocks_then_equal(tiny_ref_dir: Path, tiny_reference: dict) -> None:
    dec = load_decoder(tiny_ref_dir, device="cpu")
    latents = tiny_reference["decoder_latents"].transpose(1, 2)
    seen: list[int] = []

    def blocks():
        for i, b in enumerate(latents.split(10, dim=1)):
            seen.append(i)
            yield b

    stream = dec.decode_stream(blocks())
    first = next(stream)
    assert len(seen) <= 2 and first.shape[-1] > 0  # audio after at most two blocks of 10 frames
    full = torch.cat([first, *stream], dim=-1)
    assert rel_err(full, tiny_reference["decoder_audio"]) <= 1e-4


def test_config_round_trips_released_json(tiny_ref_dir: Path, tmp_path: Path) -> None:
    cfg = DecoderConfig.load(tiny_ref_dir / "decoder.json")
    assert cfg.hop_length == 9600 and cfg.activation == "snakebeta" and cfg.use_bias_at_final is False
    cfg.save(tmp_path / "decoder.json")
    again = json.loads((tmp_path / "decoder.json").read_text())
    original = json.loads((tiny_ref_dir / "decoder.json").read_text())
    assert {k: again[k] for k in original} == original  # training keys kept, nothing changed


def test_parametrization_key_style_and_save_round_trip(tiny_ref_dir: Path, tiny_reference: dict, tmp_path: Path) -> None:
    legacy = read_state_dict(tiny_ref_dir / "decoder.bin", pickle_key="generator")
    renamed = {}
    for k, v in legacy.items():
        k = k.replace(".weight_g", ".parametrizations.weight.original0").replace(".weight_v", ".parametrizations.weight.original1")
        renamed[k] = v
    mdir = tmp_path / "param_style"
    mdir.mkdir()
    shutil.copy(tiny_ref_dir / "decoder.json", mdir / "decoder.json")
    torch.save({"generator": renamed}, mdir / "decoder.bin")
    latents = tiny_reference["decoder_short_latents"].transpose(1, 2)
    dec = load_decoder(mdir, device="cpu")
    with torch.inference_mode():
        a = dec.decode(latents)
    assert rel_err(a, tiny_reference["decoder_short_audio"]) <= 1e-4
    out = tmp_path / "saved"
    save_decoder(dec, out)
    assert sorted(p.name for p in out.iterdir()) == ["decoder.json", "decoder.safetensors"]
    with torch.inference_mode():
        b = load_decoder(out, device="cpu").decode(latents)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_training_weight_norm_is_exact_and_saves_folded(tmp_path: Path) -> None:
    dec = micro_decoder()
    x = torch.randn(1, 25, 8)
    ref = dec.decode(x)
    dec.apply_weight_norm()
    assert any(".parametrizations.weight.original0" in k for k in dec.state_dict())
    torch.testing.assert_close(dec.decode(x), ref, rtol=1e-5, atol=1e-6)
    save_decoder(dec, tmp_path)
    torch.testing.assert_close(load_decoder(tmp_path, device="cpu").decode(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fault", ["missing", "unexpected", "shape"])
def test_strict_loading_names_file_and_key(tmp_path: Path, fault: str) -> None:
    save_decoder(micro_decoder(), tmp_path)
    from safetensors.torch import load_file, save_file

    path = tmp_path / "decoder.safetensors"
    state = load_file(str(path))
    if fault == "missing":
        del state["conv_pre.bias"]
    elif fault == "unexpected":
        state["decoder.extra"] = torch.zeros(1)
    else:
        state["conv_post.weight"] = torch.zeros(1, 2, 5)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_decoder(tmp_path, device="cpu")
    key = {"missing": "conv_pre.bias", "unexpected": "decoder.extra", "shape": "conv_post.weight"}[fault]
    assert "decoder.safetensors" in str(err.value) and key in str(err.value)


def test_missing_files_and_bad_config_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model directory not found"):
        load_decoder(tmp_path / "nope")
    with pytest.raises(ConfigError, match="decoder.json"):
        load_decoder(tmp_path)
    micro_config().save(tmp_path / "decoder.json")
    with pytest.raises(CheckpointError, match="decoder.bin"):
        load_decoder(tmp_path)
    with pytest.raises(ConfigError, match="even difference"):
        DecoderConfig.from_dict({**micro_config().to_dict(), "upsample_kernel_sizes": [7, 4]})
    with pytest.raises(ConfigError, match="activation"):
        DecoderConfig.from_dict({**micro_config().to_dict(), "activation": "relu"})


# -- chunk schedule, batching, streaming ----------------------------------------------------------------

def test_chunk_plan_matches_reference_example() -> None:
    # spec: T=47 -> frames 0-16 from chunk 0, 17-28 from chunk 1, 29-46 from the final chunk (start 27)
    segs = plan_segments(47)
    assert [(s.start, s.lo, s.hi) for s in segs] == [(0, 0, 17), (15, 17, 29), (27, 29, 47)]


@pytest.mark.parametrize("chunk,overlap", [(20, 5), (20, 0), (8, 3), (6, 4), (10, 9)])
def test_stable_frames_is_exactly_what_no_future_length_changes(chunk: int, overlap: int) -> None:
    def owners(total: int) -> list[tuple[int, int]]:
        out = []
        for s in plan_segments(total, chunk, overlap):
            out += [(s.start, s.size)] * (s.hi - s.lo)
        return out

    for n in range(1, 4 * chunk):
        futures = [owners(t) for t in range(n, n + 3 * chunk)]
        exact = 0
        while exact < n and all(f[exact] == futures[0][exact] for f in futures):
            exact += 1
        assert stable_frames(n, chunk, overlap) == exact, n


def test_batched_decode_equals_one_by_one() -> None:
    dec = micro_decoder()
    x = torch.randn(3, 53, 8)
    together = dec.decode(x, max_batch=4)
    alone = torch.cat([dec.decode(x[i : i + 1]) for i in range(3)])
    assert together.shape == (3, 1, 53 * 8)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frames", [1, 7, 19, 20])
def test_short_latents_decode_in_one_pass(frames: int) -> None:
    dec = micro_decoder()
    x = torch.randn(2, frames, 8)
    torch.testing.assert_close(dec.decode(x), dec(x.transpose(1, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frames", [1, 12, 20, 21, 34, 35, 36, 47, 50, 96])
def test_stream_equals_decode_and_starts_after_two_blocks(frames: int) -> None:
    dec = micro_decoder()
    x = torch.randn(2, frames, 8)
    received: list[int] = []
    counts: list[int] = []

    def blocks():
        for b in x.split(10, dim=1):
            received.append(b.shape[1])
            yield b

    chunks = []
    for audio in dec.decode_stream(blocks()):
        counts.append(len(received))
        chunks.append(audio)
    streamed = torch.cat(chunks, dim=-1)
    torch.testing.assert_close(streamed, dec.decode(x), rtol=0, atol=1e-5)
    if frames > 20:
        assert counts[0] == 2  # first audio right after the second block
        assert len(chunks) >= 2


def test_stream_with_irregular_blocks() -> None:
    dec = micro_decoder(seed=1, resblock="2", activation="snake", use_tanh_at_final=True)
    x = torch.randn(1, 77, 8)
    sizes = [3, 17, 1, 25, 9, 22]
    streamed = torch.cat(list(dec.decode_stream(x.split(sizes, dim=1))), dim=-1)
    torch.testing.assert_close(streamed, dec.decode(x), rtol=0, atol=1e-5)


def test_bad_latent_shapes_are_named() -> None:
    dec = micro_decoder()
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        dec.decode(torch.zeros(1, 8, 30)[:, :3])
    with pytest.raises(ValueError, match="block 1"):
        list(dec.decode_stream([torch.zeros(1, 20, 8), torch.zeros(1, 5, 4)]))
    with pytest.raises(ValueError, match="batch size"):
        list(dec.decode_stream([torch.zeros(1, 20, 8), torch.zeros(2, 5, 8)]))


def test_pre_transformer_option_keeps_lengths(tmp_path: Path) -> None:
    dec = micro_decoder(transformer_layers=1, transformer_dim=16, transformer_heads=2)
    x = torch.randn(1, 30, 8)
    assert dec.decode(x).shape == (1, 1, 240)
    save_decoder(dec, tmp_path)
    torch.testing.assert_close(load_decoder(tmp_path, device="cpu").decode(x), dec.decode(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_half_precision_on_gpu_tracks_float32(tiny_ref_dir: Path, tiny_reference: dict) -> None:
    dec = load_decoder(tiny_ref_dir)  # CUDA, float16 by default (as the reference runs)
    assert dec.device.type == "cuda" and dec.dtype == torch.float16
    latents = tiny_reference["decoder_latents"].transpose(1, 2)
    with torch.inference_mode():
        audio = dec.decode(latents.cuda()).cpu()
        streamed = torch.cat(list(dec.decode_stream(latents.cuda().split(10, dim=1))), dim=-1).cpu()
    assert audio.dtype == torch.float32
    assert rel_err(audio, tiny_reference["decoder_audio"]) <= 2e-2
    torch.testing.assert_close(streamed, audio, rtol=0, atol=1e-3)
