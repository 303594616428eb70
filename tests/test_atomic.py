"""The one atomic-write helper: whole files or none, the mode a plain open() gives, no temporary leftovers."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dr2studio.atomic import atomic_path, atomic_write_bytes, atomic_write_text, default_file_mode


@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_text_and_bytes_land_whole_with_the_open_mode(tmp_path: Path, umask: int) -> None:
    assert default_file_mode() == 0o666 & ~umask
    atomic_write_text(tmp_path / "a.json", "{\"é\": 1}\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "{\"é\": 1}\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.bin") == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_safetensors_writer_gets_the_open_mode_not_0600(tmp_path: Path, umask: int) -> None:
    """safetensors and mkstemp create 0600 files; the helper gives the group what open() would."""
    from safetensors.torch import load_file, save_file

    target = tmp_path / "w.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".safetensors" and tmp != target
        save_file({"x": torch.arange(3.0)}, str(tmp))
        os.chmod(tmp, 0o600)  # what a private temporary file looks like
    assert _mode(target) == 0o666 & ~umask
    assert torch.equal(load_file(str(target))["x"], torch.arange(3.0))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "song.wav"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("disk on fire")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(target):
            pass
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["song.wav"]


def test_every_former_hand_written_site_goes_through_the_helper() -> None:
    """The temp-name-then-rename write exists once: no module but the helper calls os.replace on a file."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("dr2studio", "training"):
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(root).as_posix()
            if rel == "dr2studio/atomic.py":
                continue
            if "os.replace(" in text or "mkstemp(" in text or "NamedTemporaryFile(" in text:
                offenders.append(rel)
    assert not offenders, f"write through dr2studio.atomic instead: {offenders}"
