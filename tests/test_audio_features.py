"""The product's own audio measurements: key names, and the tag style encoder reading a reference recording."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from dr2studio.audio.keys import MODES, key_name, parse_key
from dr2studio.lab.synth import generate_song, parse_style
from dr2studio.style.tag_encoder import TagStyleConfig, TagStyleEncoder


@pytest.mark.parametrize("mode", MODES)
def test_every_key_name_parses_back_to_its_pitch_class(mode):
    for pc in range(12):
        assert parse_key(f"{key_name(pc, mode)} {mode}") == (pc, mode)


def test_key_errors_name_the_value():
    with pytest.raises(ValueError, match="H minor"):
        parse_key("H minor")
    with pytest.raises(ValueError, match="dorian"):
        key_name(0, "dorian")


def test_tag_encoder_reads_tempo_and_key_of_a_reference_recording(caplog):
    song = generate_song(3, duration=15.0)
    facts = parse_style(song.style)
    enc = TagStyleEncoder(TagStyleConfig(seed=0))
    audio = torch.as_tensor(song.audio, dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="dr2studio.style.tag_encoder"):
        vec = enc.embed_audio(audio if audio.ndim == 2 else audio[None], song.sample_rate)
    read = re.search(r"read as '(\d+) bpm, ([A-G][#b]?) (major|minor)'", caplog.text)
    assert read, caplog.text
    assert abs(float(read.group(1)) - facts.tempo) / facts.tempo < 0.04
    assert parse_key(f"{read.group(2)} {read.group(3)}") == (facts.tonic_pc, facts.mode)
    assert torch.equal(vec, enc.embed_text(f"{read.group(1)} bpm, {read.group(2)} {read.group(3)}"))
