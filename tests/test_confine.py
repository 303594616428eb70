"""dr2studio.confine: paths stay inside the folder the user gave, links resolved, on real files and links."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dr2studio.bridge import paths as bridge_paths
from dr2studio.confine import (
    ConfineError,
    check_dir_inside,
    check_file_target,
    check_writable_dir,
    ensure_dir_inside,
    read_text_inside,
    resolve_inside,
    resolve_root,
)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """A project folder and an ``outside`` folder next to it that nothing may touch."""
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret", encoding="utf-8")
    return project, outside


def test_resolve_inside_refuses_dotdot_absolute_and_links_out(world: tuple[Path, Path]) -> None:
    project, outside = world
    (project / "lyrics.lrc").write_text("[verse]\nla\n", encoding="utf-8")
    assert resolve_inside(project, "lyrics.lrc") == project.resolve() / "lyrics.lrc"
    assert resolve_inside(project, project / "new" / "x.wav") == project.resolve() / "new" / "x.wav"
    (project / "out").symlink_to(outside)
    (project / "file-out.lrc").symlink_to(outside / "secret.txt")
    (project / "dangling").symlink_to(outside / "not-yet")
    for bad in ("../outside/secret.txt", str(outside / "secret.txt"), "out/secret.txt", "file-out.lrc",
                "dangling", "sub/../../outside"):
        with pytest.raises(ConfineError, match="outside the project folder"):
            resolve_inside(project, bad, "lyrics file")
    for bad in ("", "   ", "a\x00b"):
        with pytest.raises(ConfineError, match="empty or holds a NUL"):
            resolve_inside(project, bad)


def test_links_that_stay_inside_are_followed(world: tuple[Path, Path]) -> None:
    project, _ = world
    (project / "Real Samples").mkdir()
    (project / "Samples").symlink_to("Real Samples")
    made = ensure_dir_inside(project, "Samples/Imported/dr2")
    assert made == project.resolve() / "Real Samples" / "Imported" / "dr2" and made.is_dir()


def test_a_root_that_is_the_users_own_link_is_theirs(world: tuple[Path, Path], tmp_path: Path) -> None:
    project, _ = world
    alias = tmp_path / "alias"
    alias.symlink_to(project)
    assert resolve_root(alias) == project.resolve()
    assert ensure_dir_inside(alias, "dr2/take") == project.resolve() / "dr2" / "take"
    with pytest.raises(ConfineError, match="does not exist"):
        resolve_root(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfineError, match="loop|cannot be resolved|does not exist"):
        resolve_root(tmp_path / "loop")


@pytest.mark.parametrize("relative", ["dr2", "dr2/take", "Samples/Imported/dr2", "Media/dr2"])
def test_ensure_dir_inside_refuses_a_link_out_and_creates_nothing_there(world: tuple[Path, Path],
                                                                       relative: str) -> None:
    project, outside = world
    first = relative.split("/")[0]
    (project / first).symlink_to(outside)
    with pytest.raises(ConfineError, match=f"{first} is a link to .*outside the project folder"):
        ensure_dir_inside(project, relative)
    with pytest.raises(ConfineError, match="outside the project folder"):
        check_dir_inside(project, relative)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_ensure_dir_inside_refuses_a_deep_link_out_and_bad_components(world: tuple[Path, Path]) -> None:
    project, outside = world
    (project / "Samples" / "Imported").mkdir(parents=True)
    (project / "Samples" / "Imported" / "dr2").symlink_to(outside)
    with pytest.raises(ConfineError, match="dr2 is a link to"):
        ensure_dir_inside(project, "Samples/Imported/dr2/take")
    (project / "afile").write_text("x")
    with pytest.raises(ConfineError, match="exists and is not a folder"):
        ensure_dir_inside(project, "afile/below")
    (project / "gone").symlink_to(project / "missing-target")
    with pytest.raises(ConfineError, match="does not exist"):
        ensure_dir_inside(project, "gone")
    for bad in ("../x", "a/../../x", "/etc"):
        with pytest.raises(ConfineError, match="not allowed"):
            ensure_dir_inside(project, bad)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_check_dir_inside_returns_the_deepest_existing_folder(world: tuple[Path, Path]) -> None:
    project, _ = world
    assert check_dir_inside(project, "Samples/Imported/dr2") == project.resolve()
    (project / "Samples" / "Imported").mkdir(parents=True)
    assert check_dir_inside(project, "Samples/Imported/dr2") == project.resolve() / "Samples" / "Imported"
    assert not (project / "Samples" / "Imported" / "dr2").exists()  # it checks, it creates nothing


def test_check_file_target_refuses_writing_through_a_link_out(world: tuple[Path, Path]) -> None:
    project, outside = world
    assert check_file_target(project, "dr2studio.json") == project.resolve() / "dr2studio.json"
    (project / "dr2studio.json").symlink_to(outside / "secret.txt")
    with pytest.raises(ConfineError, match="manifest .* is a link to .*outside the project folder"):
        check_file_target(project, "dr2studio.json", "manifest")
    (project / "inner.json").write_text("{}")
    (project / "alias.json").symlink_to("inner.json")
    assert check_file_target(project, "alias.json") == project.resolve() / "alias.json"
    (project / "out").symlink_to(outside)
    with pytest.raises(ConfineError, match="outside the project folder"):
        check_file_target(project, "out/x.wav")
    (project / "adir").mkdir()
    with pytest.raises(ConfineError, match="is a folder"):
        check_file_target(project, "adir")
    assert (outside / "secret.txt").read_text() == "secret"


def test_read_text_inside_names_what_is_wrong(world: tuple[Path, Path]) -> None:
    project, outside = world
    (project / "song.lrc").write_text("\ufeff[verse]\nla\n", encoding="utf-8")
    assert read_text_inside(project, "song.lrc", max_bytes=100)[1] == "[verse]\nla\n"
    (project / "folder.lrc").mkdir()
    with pytest.raises(ConfineError, match="is a folder, not a file"):
        read_text_inside(project, "folder.lrc", max_bytes=100, what="lyrics file")
    with pytest.raises(ConfineError, match="does not exist"):
        read_text_inside(project, "missing.lrc", max_bytes=100)
    with pytest.raises(ConfineError, match="the limit is 4"):
        read_text_inside(project, "song.lrc", max_bytes=4)
    with pytest.raises(ConfineError, match="must end with one of .lrc"):
        read_text_inside(project, "notes.txt", max_bytes=100, suffixes=(".lrc",))
    (project / "bad.lrc").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ConfineError, match="not UTF-8"):
        read_text_inside(project, "bad.lrc", max_bytes=100)
    (project / "leak.lrc").symlink_to(outside / "secret.txt")
    with pytest.raises(ConfineError, match="outside the project folder") as info:
        read_text_inside(project, "leak.lrc", max_bytes=100)
    assert "secret" not in str(info.value).replace("secret.txt", "")


def test_bridge_paths_is_the_same_helper() -> None:
    assert bridge_paths.PathError is ConfineError
    assert bridge_paths.resolve_inside is resolve_inside and bridge_paths.ensure_dir_inside is ensure_dir_inside
    assert bridge_paths.read_text_inside is read_text_inside
    with pytest.raises(bridge_paths.PathError, match="job id"):
        bridge_paths.check_name("../x", "job id")


# -- writability, as a user who cannot write (root writes anywhere, so the probe runs as nobody) -----------

def _as_user_who_cannot_write() -> list[str]:
    """A command prefix that runs as an unprivileged user (``nobody`` under root; as is otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop privileges to test a read-only folder")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder another user can enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="dr2-confine-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_check_writable_dir_names_a_read_only_folder(shared_tmp: Path) -> None:
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    open_ = shared_tmp / "open"
    open_.mkdir()
    open_.chmod(0o777)
    code = ("import sys; from dr2studio.confine import check_writable_dir, ConfineError\n"
            "check_writable_dir(sys.argv[2])\n"
            "try:\n    check_writable_dir(sys.argv[1])\nexcept ConfineError as e:\n    print(e); sys.exit(3)\n")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([*_as_user_who_cannot_write(), sys.executable, "-c", code, str(locked), str(open_)],
                            capture_output=True, text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                            timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"output folder {locked} is not writable: it is read-only" in result.stdout
    assert list(locked.iterdir()) == [] and list(open_.iterdir()) == []  # the probe leaves nothing


def test_check_writable_dir_refuses_a_missing_folder_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfineError, match="does not exist or is not a folder"):
        check_writable_dir(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfineError, match="f does not exist or is not a folder"):
        check_writable_dir(tmp_path / "f")
    assert check_writable_dir(tmp_path) == tmp_path and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
