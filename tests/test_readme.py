"""The README runs as written: every ``dr2studio`` command and Python snippet in README.md itself.

The commands are read out of the README (not a copy), in order, and run in a scratch folder that holds
the repository's ``examples/`` (so relative paths mean what they mean from the repository root, and
nothing is written into the checkout). Left out, and why:
- commands that name the released weights on the hub (``ASLP-lab/...``) or need a download
  (``--separate``: Hybrid Demucs weights), which a test machine without network cannot fetch;
- long-running servers (``serve``, ``bridge``), which docs/bridge.md and the bridge tests cover.
Each command must exit 0 and write the files it names; the walkthrough's chain (generate -> extend ->
infill -> stems) is checked for what the text beside it promises.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LONG_RUNNING = {"serve", "bridge", "ui"}
NEEDS_DOWNLOAD = ("ASLP-lab/", "--separate", "--style-audio")

pytestmark = pytest.mark.slow


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def readme_commands() -> list[str]:
    """Every ``dr2studio ...`` command line of the README's bash blocks (continuations joined, comments cut)."""
    commands: list[str] = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("#") or "dr2studio " not in line:
                continue
            for part in line.split("&&"):  # "bash scripts/setup.sh && .venv/bin/dr2studio generate ..."
                code = shlex.split(part, comments=True)
                if code and code[0].endswith("dr2studio"):  # setup itself is CI's own job (.ci/run)
                    commands.append(shlex.join(code))
    return commands


def _runnable(command: str) -> bool:
    argv = shlex.split(command)
    return argv[1] not in LONG_RUNNING and not any(marker in command for marker in NEEDS_DOWNLOAD)


def _exe() -> str:
    exe = Path(sys.executable).with_name("dr2studio")
    return str(exe) if exe.is_file() else shutil.which("dr2studio") or "dr2studio"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "examples", work / "examples")
    return work


def test_the_readme_names_its_walkthrough_commands() -> None:
    commands = readme_commands()
    kinds = {shlex.split(c)[1] for c in commands}
    assert {"generate", "extend", "infill", "stems", "lyrics"} <= kinds, commands
    assert sum(_runnable(c) for c in commands) >= 6, commands


def test_every_readme_command_runs_as_written(workdir: Path) -> None:
    ran: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    env = dict(os.environ, DR2STUDIO_TEST_THREADS="2")
    for command in readme_commands():
        if not _runnable(command):
            continue
        argv = shlex.split(command)
        argv[0] = _exe()
        if "--json" not in argv and argv[1] != "lyrics":
            argv.append("--json")
        proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stderr[-2000:]}"
        ran.append((command, proc))
        for flag in ("-o", "--out"):
            if flag in argv:
                out = workdir / argv[argv.index(flag) + 1]
                assert out.is_file(), f"{command} did not write {out}"
                info = sf.info(str(out))
                assert info.frames > 0
    assert len(ran) >= 6
    _check_walkthrough(workdir)


def _check_walkthrough(workdir: Path) -> None:
    """generate gives its --duration; extend adds its --seconds; infill keeps the length; stems land in the project."""
    by_kind = {shlex.split(c)[1]: shlex.split(c) for c in readme_commands() if _runnable(c)}
    gen = by_kind["generate"]
    take = workdir / gen[gen.index("-o") + 1]
    duration = float(gen[gen.index("--duration") + 1])
    assert sf.info(str(take)).duration == pytest.approx(duration, abs=0.25)
    ext = by_kind["extend"]
    src, longer = workdir / ext[2], workdir / ext[ext.index("-o") + 1]
    added = sf.info(str(longer)).duration - sf.info(str(src)).duration
    assert added == pytest.approx(float(ext[ext.index("--seconds") + 1]), abs=0.5)
    inf = by_kind["infill"]
    src, fixed = workdir / inf[2], workdir / inf[inf.index("-o") + 1]
    assert sf.info(str(fixed)).frames == sf.info(str(src)).frames
    stems = by_kind["stems"]
    project = workdir / stems[stems.index("--project") + 1]
    manifest = json.loads((project / "dr2studio.json").read_text())
    assert manifest["takes"], manifest


def test_readme_python_snippets_run(workdir: Path) -> None:
    blocks = _blocks("python")
    assert blocks, "the README shows the Python API"
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], cwd=workdir, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, DR2STUDIO_TEST_THREADS="2"))
        assert proc.returncode == 0, f"README Python snippet failed:\n{block}\n{proc.stderr[-2000:]}"
