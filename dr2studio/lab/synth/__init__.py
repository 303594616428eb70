"""Procedural songs (audio, LRC lyrics, style text) for training and measuring the demo model.

>>> from dr2studio.lab.synth import generate_song
>>> song = generate_song(7)            # doctest: +SKIP
>>> song.style                          # doctest: +SKIP
'pop, 112 bpm, A minor, female vocal, piano, pad, bass, drums'
"""
from dr2studio.lab.synth.arrangement import GENRES, SECTION_KINDS, SongSection
from dr2studio.lab.synth.song import SynthConfig, SynthSong, generate_song, lyrics_lrc
from dr2studio.lab.synth.style import StyleFacts, describe_style, parse_style
from dr2studio.lab.synth.theory import key_name, parse_key

__all__ = [
    "GENRES",
    "SECTION_KINDS",
    "SongSection",
    "SynthConfig",
    "SynthSong",
    "generate_song",
    "lyrics_lrc",
    "StyleFacts",
    "describe_style",
    "parse_style",
    "key_name",
    "parse_key",
]
