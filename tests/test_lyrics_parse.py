"""Lyrics parsing: plain/LRC text -> sections, errors with file and line, rendering back."""
from __future__ import annotations

import pytest

from dr2studio.lyrics import LyricsDocument, LyricsError, Section, parse_lyrics, parse_lyrics_file, render_sections


SONG = """[ti:Night Drive]
[ar:Nobody]
[offset:+500]

[00:00.00][intro]
[00:05.10]City lights are calling
[00:08.50][01:40.25]Take me home tonight

 [Verse 2] \r
Roads are empty
[CHORUS]
Take me home tonight
[chorus: both]
Take me home <01:02.30>tonight
"""


def test_sections_kinds_indices_and_lines():
    doc = parse_lyrics(SONG, source="night.lrc")
    assert [(s.kind, s.index) for s in doc.sections] == [("intro", 1), ("verse", 1), ("chorus", 1), ("chorus", 2)]
    intro = doc.find("intro")
    assert intro.lines == ("City lights are calling", "Take me home tonight")
    assert doc.find("chorus", 2).lines == ("Take me home tonight",)  # enhanced word stamps removed
    assert doc.metadata == {"ti": "Night Drive", "ar": "Nobody", "offset": "+500"}
    assert doc.source == "night.lrc"


def test_lrc_timestamps_kept_as_hints_with_offset():
    intro = parse_lyrics(SONG).find("intro")
    # [offset:+500] shows lyrics 0.5 s earlier
    assert intro.times[0] == pytest.approx((4.6,))
    assert intro.times[1] == pytest.approx((8.0, 99.75))
    assert intro.start_time == 0.0 and intro.first_time == 0.0
    assert parse_lyrics("[verse]\nno timing here").sections[0].times == ((),)


def test_crlf_bom_blank_lines_and_untagged_lines():
    text = "\ufeffhello there\r\n\r\n  \r\n[verse]\r\nsecond line\r\n"
    doc = parse_lyrics(text)
    assert [(s.kind, s.lines) for s in doc.sections] == [("untagged", ("hello there",)), ("verse", ("second line",))]
    assert doc.to_text() == "hello there\n[verse]\nsecond line"


@pytest.mark.parametrize("line", ["[pre-chorus]", "hello [laughs] there", "[Chorus x2]", "oops ]"])
def test_unknown_brackets_name_file_and_line(line):
    with pytest.raises(LyricsError) as info:
        parse_lyrics(f"[verse]\nfine line\n{line}\n", source="song.txt")
    assert str(info.value).startswith("song.txt:3: unknown bracketed tag")
    assert info.value.line == 3


def test_tag_with_text_on_same_line_and_aliases():
    doc = parse_lyrics("[Chorus] la la la\n[Instrumental]\n[verse1]\nx")
    assert [(s.kind, s.index, s.lines) for s in doc.sections] == [
        ("chorus", 1, ("la la la",)), ("inst", 1, ()), ("verse", 1, ("x",))]


def test_render_subset_and_rebuild_from_sections():
    doc = parse_lyrics("[verse]\na\n[chorus]\nb\n[verse]\nc\n[chorus]\nd\n[end]")
    second = doc.find("chorus", 2)
    assert render_sections([second]) == "[chorus]\nd"
    assert doc.to_text([doc.find("verse", 2), second]) == "[verse]\nc\n[chorus]\nd"
    # append a bridge before [end]: indices are renumbered per kind, round trip through text is stable
    sections = list(doc.sections)
    sections.insert(doc.position("end"), Section("bridge", 7, ["new bridge line"]))
    rebuilt = LyricsDocument.from_sections(sections)
    assert rebuilt.find("bridge").index == 1
    assert parse_lyrics(rebuilt.to_text()).sections == rebuilt.sections
    with pytest.raises(KeyError, match="chorus 3"):
        doc.find("chorus", 3)


def test_section_validation():
    with pytest.raises(ValueError, match="unknown section kind"):
        Section("prechorus", 1, ["x"])
    with pytest.raises(ValueError, match="index"):
        Section("verse", 0)
    with pytest.raises(ValueError, match="single line"):
        Section("verse", 1, ["a\nb"])
    assert Section("Chorus", 2, ["x"]).kind == "chorus"


def test_files_utf8_utf16_and_undecodable(tmp_path):
    good = tmp_path / "a.lrc"
    good.write_bytes("\ufeff[verse]\r\n我爱你\r\n".encode("utf-8"))
    assert parse_lyrics_file(good).lines == ["我爱你"]
    wide = tmp_path / "w.txt"
    wide.write_bytes("[chorus]\nhey\n".encode("utf-16"))
    assert parse_lyrics_file(wide).find("chorus").lines == ("hey",)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"[verse]\nok\ncaf\xe9 latin-1\n")
    with pytest.raises(LyricsError, match=r"bad.txt:3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        parse_lyrics_file(bad)
    with pytest.raises(LyricsError, match="file not found"):
        parse_lyrics_file(tmp_path / "missing.lrc")


def test_tag_spellings_read_as_before_the_linear_pattern():
    """The structure-tag pattern was rewritten without backtracking (issue 18); these spellings still read."""
    text = "\n".join(["[Verse_1: Ann]", "a", "[chorus - 2]", "b", "[ BRIDGE 3 ]", "c", "[verse-2]", "d",
                      "[00:01.00][outro]", "e", "[Instrumental]", "[chorus_]", "f"])
    with pytest.raises(LyricsError, match=r":12: unknown bracketed tag '\[chorus_\]'"):
        parse_lyrics(text)
    doc = parse_lyrics(text.replace("[chorus_]", "[chorus]"))
    assert [s.label for s in doc] == ["verse 1", "chorus 1", "bridge 1", "verse 2", "outro 1", "inst 1", "chorus 2"]
    assert doc.find("outro").start_time == 1.0


def test_many_time_stamps_on_one_line_are_all_kept():
    line = "".join(f"[00:{i % 60:02d}.00]" for i in range(2000)) + "la"
    doc = parse_lyrics(line)
    assert doc.lines == ["la"] and len(doc.sections[0].times[0]) == 2000


def test_long_unknown_tag_error_is_short(tmp_path):
    path = tmp_path / "long.lrc"
    path.write_text("[verse]\n[" + "x" * 50000 + "]\n", encoding="utf-8")
    with pytest.raises(LyricsError) as err:
        parse_lyrics_file(path)
    assert str(err.value).startswith(f"{path}:2: unknown bracketed tag '[xxx") and len(str(err.value)) < 400
