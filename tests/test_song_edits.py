"""The edit history as typed :class:`Edit` records, stored as plain JSON in the sidecar both ways:
old sidecars load, and what new code writes reads back by key in old code."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from dr2studio.song import Edit, Song, sidecar_path

EXTEND = {
    "kind": "extend", "splice": 4.0, "crossfade": 0.25, "prefix_frames": 20, "new_frames": 10, "seconds": 2.0,
    "added_seconds": 2.0, "length": {"requested": 2.0, "delivered": 2.0, "ended_early": False, "reason": ""},
    "sample_rate": 48000, "level_match_db": None, "end_frames_dropped": 0, "lyrics": "[chorus]\nla",
    "seed": 11, "latents_from": {"method": "sidecar"}, "lyrics_coverage": {"languages": {}},
    "steps": 2, "cfg_strength": 2.0,
}
INFILL = {"kind": "infill", "start": 1.0, "end": 2.0, "crossfade_in": 0.25, "crossfade_out": 0.25,
          "sample_rate": 48000, "level_match_db": -1.5, "lyrics": "x", "seed": 12,
          "latents_from": {"method": "sidecar"}, "steps": 2, "cfg_strength": 2.0, "future_field": [1, 2]}


def _song(edits: list) -> Song:
    gen = torch.Generator().manual_seed(0)
    return Song(audio=torch.rand(1, 9600 * 3, generator=gen) - 0.5, sample_rate=48000,
                latents=torch.randn(1, 3, 64, generator=gen), tokens=torch.arange(5), lyrics="[verse]\nhi",
                style=torch.randn(512, generator=gen), seed=3, settings={"steps": 2, "edits": edits})


def _stored_edits(path) -> list:
    with safe_open(str(sidecar_path(path)), framework="pt") as f:
        return json.loads(f.metadata()["settings"])["edits"]


def test_old_sidecar_dicts_load_as_edits(tmp_path):
    """A sidecar written before Edit existed (dicts in settings["edits"]) loads as typed records."""
    path = _song([dict(EXTEND), {"kind": "crop", "end": 3.5}, dict(INFILL)]).save(tmp_path / "old.wav")
    loaded = Song.load(path)
    extend, crop, infill = loaded.edits
    assert extend.kind == "extend" and extend.splice == 4.0 and extend.level_match_db is None
    assert extend.length["requested"] == 2.0 and extend.latents_from == {"method": "sidecar"}
    assert crop == Edit(kind="crop", end=3.5)
    assert infill.start == 1.0 and infill.crossfade_out == 0.25 and infill.extra == {"future_field": [1, 2]}
    assert loaded.last_edit == infill
    # and round-trips to exactly the stored objects
    assert [e.to_dict() for e in loaded.edits] == [EXTEND, {"kind": "crop", "end": 3.5}, INFILL]


def test_new_edits_are_plain_dicts_old_code_reads_by_key(tmp_path):
    song = _song([])
    song.edits = [Edit.from_dict(EXTEND)]
    settings = song.settings_with_edit(Edit(kind="crop", end=3.0))
    assert song.settings["edits"] == [EXTEND]  # the song itself is untouched
    song = Song(audio=song.audio, sample_rate=48000, latents=song.latents, settings=settings)
    path = song.save(tmp_path / "new.wav")
    stored = _stored_edits(path)
    assert all(type(e) is dict for e in stored)
    assert stored[0]["splice"] == 4.0 and stored[0]["level_match_db"] is None and stored[0]["seed"] == 11
    assert stored[1] == {"kind": "crop", "end": 3.0} and "seed" not in stored[1]  # no None noise in a crop
    assert Song.load(path).edits == [Edit.from_dict(EXTEND), Edit(kind="crop", end=3.0)]


def test_a_song_without_history_has_no_edits(tmp_path):
    song = _song([])
    del song.settings["edits"]
    assert song.edits == [] and song.last_edit is None
    assert Song.load(song.save(tmp_path / "plain.wav")).last_edit is None


def test_bridge_reads_the_typed_record():
    """Where the bridge places a take and which seed it reports come from the newest Edit."""
    from dr2studio.bridge.core import _job_seed
    from dr2studio.bridge.deliver import changed_region, crop_song
    from dr2studio.bridge.session import BridgeError

    song = _song([dict(EXTEND)])
    assert changed_region("extend", song) == (4.0, None) and _job_seed("extend", song) == 11
    assert _job_seed("generate", song) == 3
    fixed = _song([dict(INFILL)])
    assert changed_region("infill", fixed) == (0.75, 2.25)
    with pytest.raises(BridgeError, match="no edit record"):
        changed_region("infill", song)
    cut = crop_song(song, 0.3)  # 0.3 s: one latent frame of 0.2 s
    assert cut.edits[-1] == Edit(kind="crop", end=0.2) and cut.settings["edits"][0] == EXTEND
    assert cut.audio.shape[1] == 9600 and cut.latents.shape[1] == 1


def test_history_is_covered_by_the_sidecar_checksum(tmp_path):
    """Issue 18: the history is part of the checksummed state; a rewritten history is refused, not carried over."""
    from safetensors.torch import save_file

    from dr2studio.song import SidecarError

    song = _song([dict(EXTEND)])
    song = Song(audio=song.audio, sample_rate=48000, latents=song.latents,
                settings=song.settings_with_edit(Edit(kind="crop", end=3.0)))
    path = song.save(tmp_path / "take.wav")
    assert [e.kind for e in Song.load(path).edits] == ["extend", "crop"]
    with safe_open(str(sidecar_path(path)), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    settings = json.loads(meta["settings"])
    settings["edits"] = settings["edits"][:1]  # history rewritten
    save_file(tensors, str(sidecar_path(path)), metadata={**meta, "settings": json.dumps(settings)})
    with pytest.raises(SidecarError, match="state_sha256 does not match"):
        Song.load(path)
