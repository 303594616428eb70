"""Shard format, resumable streaming, padding and manifest parsing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from dr2studio.data import (
    BadRows,
    DataPosition,
    DatasetIndex,
    Example,
    Shard,
    ShardError,
    ShardStream,
    collate_examples,
    load_audio,
    load_index,
    read_manifest,
    write_index,
    write_shard,
)
from dr2studio.data.audio_stream import AudioSegmentStream


def _example(i: int, frames: int, tokens: int) -> Example:
    g = torch.Generator().manual_seed(i)
    return Example(
        id=f"song-{i}",
        latents=torch.randn(frames, 8, generator=g),
        tokens=torch.randint(1, 500, (tokens,), generator=g),
        style=torch.randn(16, generator=g),
        ssl={"mel": torch.randn(frames, 4, generator=g)},
        language="en",
    )


def _dataset(root, n_shards=3, per_shard=4):
    infos, examples = [], []
    for s in range(n_shards):
        exs = [_example(s * per_shard + k, 5 + (s * per_shard + k) % 7, 3 + k) for k in range(per_shard)]
        examples += exs
        infos.append(write_shard(root / f"shard-{s:05d}.safetensors", exs))
    write_index(root, DatasetIndex(shards=infos, latent_rate=5.0, latent_channels=8, style_dim=16, ssl={"mel": 4}))
    return examples


def test_shard_round_trip_is_exact(tmp_path):
    examples = _dataset(tmp_path, n_shards=1, per_shard=5)
    shard = Shard(tmp_path / "shard-00000.safetensors")
    assert len(shard) == 5
    for want, got in zip(examples, shard):
        assert got.id == want.id and got.language == "en"
        assert torch.equal(got.latents, want.latents)
        assert torch.equal(got.tokens, want.tokens)
        assert torch.equal(got.style, want.style)
        assert torch.equal(got.ssl["mel"], want.ssl["mel"])
    index = load_index(tmp_path)
    assert index.num_examples == 5 and index.num_frames == sum(e.latents.shape[0] for e in examples)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not be left behind"


def test_bad_shard_and_index_errors_name_the_file(tmp_path):
    with pytest.raises(ShardError, match="index.json"):
        load_index(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a shard")
    with pytest.raises(ShardError, match="junk.safetensors"):
        Shard(tmp_path / "junk.safetensors")
    with pytest.raises(ShardError, match="latents must be"):
        Example(id="x", latents=torch.zeros(3), tokens=torch.zeros(2), style=torch.zeros(4))


def test_stream_splits_ranks_disjointly_and_resumes_exactly(tmp_path):
    _dataset(tmp_path)  # 12 examples
    collate = collate_examples
    streams = [ShardStream(tmp_path, 2, collate, rank=r, world_size=2, seed=3) for r in range(2)]
    assert streams[0].batches_per_epoch == 3
    seen = [[], []]
    for r, st in enumerate(streams):
        it = st.iter_from()
        for _ in range(3):
            batch, pos = next(it)
            seen[r] += batch.ids
    assert pos == DataPosition(1, 0)
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 12

    # resuming at a position gives exactly the batches an uninterrupted run would see
    full = [b.ids for b, _ in zip((b for b, _ in streams[0].iter_from()), range(7))]
    it = streams[0].iter_from()
    for _ in range(4):
        _, pos = next(it)
    resumed = [b.ids for b, _ in zip((b for b, _ in streams[0].iter_from(pos)), range(3))]
    assert resumed == full[4:7]
    # a new epoch is reshuffled, still without repeats inside the epoch
    assert len(set(sum(full[3:6], []))) == 6 and full[:3] != full[3:6]


def test_collate_pads_and_masks(tmp_path):
    a, b = _example(0, 4, 2), _example(1, 7, 5)
    batch = collate_examples([a, b])
    assert batch.latents.shape == (2, 7, 8) and batch.tokens.shape == (2, 5)
    assert batch.latent_mask.sum(1).tolist() == [4, 7] and batch.token_mask.sum(1).tolist() == [2, 5]
    assert torch.equal(batch.latents[0, :4], a.latents) and batch.latents[0, 4:].abs().sum() == 0
    assert batch.tokens[0, 2:].tolist() == [0, 0, 0]
    assert batch.ssl["mel"].shape == (2, 7, 4) and batch.frames == 11
    cropped = collate_examples([a, b], max_frames=5)
    assert cropped.latents.shape[1] == 5 and torch.equal(cropped.latents[1], b.latents[:5])


def test_manifest_counts_bad_lines_and_resolves_paths(tmp_path):
    sr = 8000
    sf.write(tmp_path / "a.wav", np.stack([np.ones(sr), np.zeros(sr)], 1).astype(np.float32) * 0.5, sr)
    (tmp_path / "a.lrc").write_text("[verse]\nhello", encoding="utf-8")
    lines = [
        json.dumps({"audio": "a.wav", "lyrics_path": "a.lrc", "style": "pop", "language": "en"}),
        "{not json",
        json.dumps({"lyrics": "no audio"}),
        json.dumps({"audio": "a.wav", "lyrics_path": "missing.lrc"}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = BadRows()
    rows = read_manifest(tmp_path / "m.jsonl", bad)
    assert [r.id for r in rows] == ["a"] and rows[0].lyrics == "[verse]\nhello"
    assert rows[0].audio == str(tmp_path / "a.wav")
    assert bad.counts == {"malformed json": 1, "no audio path": 1, "unreadable lyrics": 1}
    assert "m.jsonl:2" in bad.examples["malformed json"][0]
    audio = load_audio(rows[0].audio, 16000)
    assert audio.shape == (16000,) and abs(float(audio[8000]) - 0.25) < 1e-3  # stereo mixed to mono


def test_audio_segment_stream_resumes(tmp_path):
    sr = 4000
    rows = []
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", np.random.default_rng(i).uniform(-1, 1, sr).astype(np.float32), sr)
        rows.append({"audio": f"{i}.wav"})
    sf.write(tmp_path / "short.wav", np.zeros(100, np.float32), sr)
    rows.append({"audio": "short.wav"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    stream = AudioSegmentStream(read_manifest(tmp_path / "m.jsonl"), sr, 1000, 2, seed=1)
    assert stream.bad.counts == {"too short": 1} and stream.batches_per_epoch == 6
    it = stream.iter_from()
    batches = [next(it) for _ in range(8)]
    assert batches[0][0].shape == (2, 1, 1000)
    again, _ = next(stream.iter_from(batches[4][1]))
    assert torch.equal(again, batches[5][0])
