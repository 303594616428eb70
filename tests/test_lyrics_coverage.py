"""What the model cannot voice: coverage per language, the refusal rule, ``--instrumental``, demo-model defaults.

Counts are recomputed here straight from the G2P's phone string and the phoneme table's JSON, not from
the coverage code under test.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dr2studio.cli import main
from dr2studio.demo import DEMO_DIR
from dr2studio.lyrics import english as english_mod
from dr2studio.lyrics import parse_lyrics_file
from dr2studio.lyrics.coverage import is_sung, lyrics_coverage
from dr2studio.lyrics.g2p import LyricsG2P
from dr2studio.lyrics.vocab import STOP_ID, TAG_IDS
from dr2studio.song import sidecar_path
from dr2studio.studio import Studio, StudioError
from real_material import shared_real

REPO = Path(__file__).resolve().parents[1]
#: Mandarin lines of which the English-only demo table keeps no phone at all (checked in the fixture).
UNSINGABLE = "[verse]\n时光在游走\n冬天\n我是谁\n"


@pytest.fixture(scope="module", autouse=True)
def espeak() -> str:
    version = english_mod.espeak_version()
    if version is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); English G2P cannot run")
    return version


@pytest.fixture(scope="module")
def table() -> set[str]:
    return set(json.loads((DEMO_DIR / "vocab.json").read_text(encoding="utf-8"))["vocab"])


@pytest.fixture(scope="module")
def g2p() -> LyricsG2P:
    return LyricsG2P(DEMO_DIR)


@pytest.fixture(scope="module")
def studio() -> Studio:
    return Studio.load()


@pytest.fixture()
def unsingable(tmp_path: Path, g2p: LyricsG2P, table: set[str]) -> Path:
    for line in UNSINGABLE.splitlines()[1:]:
        raw = [p for p in g2p.line(line, "zh").raw.split("|") if p]
        assert raw and not any(p in table for p in raw), (line, raw)  # precondition: nothing survives
    path = tmp_path / "zh.lrc"
    path.write_text(UNSINGABLE, encoding="utf-8")
    return path


def _independent_counts(path: Path, g2p: LyricsG2P, table: set[str]) -> tuple[int, int, int]:
    """(total, kept, lines that lose phones) of a Mandarin-only lyric, from the raw phone strings and the table."""
    total = kept = affected = 0
    for section in parse_lyrics_file(path).sections:
        for text in section.lines:
            assert re.search(r"[\u4e00-\u9fa5]", text) and not re.search(r"[A-Za-z]", text), text
            parts = [p for p in g2p.line(text, "zh").raw.split("|") if p]
            total += len(parts)
            kept += sum(p in table for p in parts)
            affected += any(p not in table for p in parts)
    return total, kept, affected


def test_real_mandarin_lyrics_coverage(g2p: LyricsG2P, table: set[str]) -> None:
    """The authors' 1.lrc through the English-only demo table: Mandarin, with the counts the table implies."""
    path = shared_real("1.lrc")
    total, kept, affected = _independent_counts(path, g2p, table)
    cov = lyrics_coverage(g2p.encode_document(parse_lyrics_file(path)), source=str(path))
    assert [lang.language for lang in cov.languages] == ["zh"]
    zh = cov.language("zh")
    assert (zh.total, zh.kept, zh.dropped) == (total, kept, total - kept)
    assert cov.dropped > 0.5 * cov.total  # most of the song is lost: the user must hear about it
    assert len(cov.lines) == affected and cov.any_dropped and not cov.nothing_to_sing
    message = cov.summary()
    assert "Mandarin" in message and f"drops {total - kept} of {total} phones" in message
    record = cov.to_dict()
    assert record["languages"]["zh"]["dropped"] == total - kept and record["message"] == message
    json.dumps(record)  # JSON-ready for --json and the sidecar


def test_per_language_split_and_english_only_lyrics(g2p: LyricsG2P, table: set[str]) -> None:
    from dr2studio.lyrics import parse_lyrics

    cov = lyrics_coverage(g2p.encode_document(parse_lyrics("[verse]\nhello 我是谁\n")))
    zh = [p for p in g2p.mandarin("我是谁").split("|") if p]
    assert cov.language("zh").total == len(zh) and cov.language("zh").kept == sum(p in table for p in zh)
    assert cov.language("en").dropped == 0 and cov.language("en").kept > 0
    clean = lyrics_coverage(g2p.encode_document(parse_lyrics("[verse]\nsing it loud\n")))
    assert not clean.any_dropped and clean.summary() and clean.to_dict()["message"] is None
    assert is_sung("ə") and is_sung("tʃ") and not is_sung("_") and not is_sung(",")


def test_studio_load_without_argument_is_the_demo_model(studio: Studio) -> None:
    assert studio.model_dir.resolve() == DEMO_DIR.resolve()


def test_studio_warns_records_and_refuses(studio: Studio, g2p: LyricsG2P, table: set[str], unsingable: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    path = shared_real("1.lrc")
    total, kept, _ = _independent_counts(path, g2p, table)
    with caplog.at_level(logging.WARNING, logger="dr2studio.studio"):
        song = studio.generate(path, "pop, 100 bpm", duration=1, steps=2, seed=0)
    warned = [r.getMessage() for r in caplog.records if "Mandarin" in r.getMessage()]
    assert len(warned) == 1 and f"{total - kept} of {total}" in warned[0]
    record = song.settings["lyrics_coverage"]
    assert record["languages"]["zh"]["dropped"] == total - kept and not record["instrumental"]

    with pytest.raises(StudioError, match="nothing left to sing.*Mandarin.*instrumental"):
        studio.generate(unsingable, "pop", duration=1, steps=2, seed=0)
    # an instrumental gets the structure tags only (and [inst] when the lyrics have none)
    tokens, _ = studio.encode_lyrics(unsingable, instrumental=True)
    assert tokens.tolist() == [TAG_IDS["verse"], STOP_ID]
    untagged, _ = studio.encode_lyrics("我是谁\n冬天\n", instrumental=True)
    assert untagged.tolist() == [TAG_IDS["inst"], STOP_ID]
    inst = studio.generate(unsingable, "pop", duration=1, steps=2, seed=0, instrumental=True)
    assert inst.settings["lyrics_coverage"]["instrumental"] and torch.equal(inst.tokens, tokens)
    # extend records the coverage of its own new lyrics in its edit
    longer = studio.extend(song, "[outro]\nsing it loud\n", seconds=1, steps=2, seed=1)
    assert longer.settings["edits"][-1]["lyrics_coverage"]["languages"]["en"]["dropped"] == 0


def _cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_refuses_unsingable_and_accepts_instrumental(tmp_path: Path, unsingable: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DR2STUDIO_MODEL", raising=False)
    out = tmp_path / "zh.wav"
    refused = _cli("generate", "--lyrics", unsingable, "--style", "pop, 100 bpm", "--duration", "1",
                   "--steps", "2", "-o", out, "--json")
    assert refused.exit_code != 0 and refused.stdout == ""
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "nothing left to sing" in errors[0] and "--instrumental" in errors[0]
    assert not out.exists() and not sidecar_path(out).exists()

    ok = _cli("generate", "--lyrics", unsingable, "--style", "pop, 100 bpm", "--duration", "1", "--steps", "2",
              "-o", out, "--json", "--instrumental")
    assert ok.exit_code == 0, ok.output
    result = json.loads(ok.stdout)
    assert out.is_file() and result["lyrics_coverage"]["instrumental"] is True
    assert result["lyrics_coverage"]["nothing_to_sing"] is True  # still said: none of it could be sung


def test_cli_generate_reports_dropped_mandarin_on_stderr_and_json(tmp_path: Path, g2p: LyricsG2P,
                                                                   table: set[str]) -> None:
    """The real console entry point (a subprocess: the CLI's own logging setup puts the warning on stderr)."""
    path = shared_real("1.lrc")
    total, kept, _ = _independent_counts(path, g2p, table)
    out = tmp_path / "song.wav"
    env = {k: v for k, v in os.environ.items() if k != "DR2STUDIO_MODEL"}
    proc = subprocess.run([sys.executable, "-m", "dr2studio.cli", "generate", "--lyrics", str(path), "--style",
                           "pop, 100 bpm", "--duration", "1", "--steps", "2", "-o", str(out), "--json", "-q"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "Mandarin" in line and "drops" in line]
    assert len(warning) == 1 and f"drops {total - kept} of {total} phones" in warning[0], proc.stderr
    field = json.loads(proc.stdout)["lyrics_coverage"]
    assert field["languages"]["zh"]["total"] == total and field["languages"]["zh"]["kept"] == kept
    from dr2studio.song import Song

    assert Song.load(out).settings["lyrics_coverage"] == field  # the sidecar keeps it for the engine / bridge


def test_lyrics_command_defaults_to_demo_model(monkeypatch: pytest.MonkeyPatch, unsingable: Path) -> None:
    from dr2studio.lyrics import encode_lyrics

    monkeypatch.delenv("DR2STUDIO_MODEL", raising=False)
    demo = REPO / "examples" / "lyrics" / "demo.lrc"
    r = _cli("lyrics", demo, "--json")
    assert r.exit_code == 0, r.output
    assert "shipped demo model" in r.stderr
    data = json.loads(r.stdout)
    assert data["tokens"] == encode_lyrics(demo.read_text(encoding="utf-8"), DEMO_DIR)
    assert data["lyrics_coverage"]["languages"]["en"]["total"] > 0

    real = shared_real("1.lrc")
    r = _cli("lyrics", real, "--json")
    assert r.exit_code == 0 and "Mandarin" in r.stderr and "warning" in r.stderr
    assert json.loads(r.stdout)["lyrics_coverage"]["languages"]["zh"]["dropped"] > 0
    # lyrics it would refuse are still shown (exit 0), with the refusal named on stderr
    r = _cli("lyrics", unsingable)
    assert r.exit_code == 0 and "nothing left to sing" in r.stderr
    assert _cli("lyrics", REPO / "no-such.lrc").exit_code != 0
