"""Training data: song manifests, pre-encoded shards, resumable streams and padded batches."""
from __future__ import annotations

from dr2studio.data.collate import LatentBatch, collate_examples, pad_sequences
from dr2studio.data.manifest import BadRows, ManifestError, ManifestRow, load_audio, read_manifest
from dr2studio.data.shards import (
    DatasetIndex,
    Example,
    Shard,
    ShardError,
    ShardInfo,
    load_index,
    write_index,
    write_shard,
)
from dr2studio.data.stream import DataPosition, ShardStream, epoch_order

__all__ = [
    "BadRows",
    "DataPosition",
    "DatasetIndex",
    "Example",
    "LatentBatch",
    "ManifestError",
    "ManifestRow",
    "Shard",
    "ShardError",
    "ShardInfo",
    "ShardStream",
    "collate_examples",
    "epoch_order",
    "load_audio",
    "load_index",
    "pad_sequences",
    "read_manifest",
    "write_index",
    "write_shard",
]
