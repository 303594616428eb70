"""A broken install is one line that names the fix, at setup and at run time; the lock file is exact."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dr2studio.stack_check import check_stack, pinned_versions

REPO = Path(__file__).resolve().parents[1]


def _broken_site(tmp_path: Path) -> Path:
    """A site-packages folder whose torchaudio fails as the torch 2.11.0 / torchaudio 2.11.1 pair did."""
    pkg = tmp_path / "site-packages" / "torchaudio"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "raise OSError('/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so: "
        "undefined symbol: torch_exception_get_what_without_backtrace')\n"
    )
    return pkg.parent


def _run(args: list[str], site: Path | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_stack_loads() -> None:
    assert check_stack() == []
    proc = _run(["-m", "dr2studio.stack_check"], None, REPO)
    assert proc.returncode == 0, proc.stderr
    assert "torch 2.11.0" in proc.stdout


def test_setup_check_names_the_fix_for_a_torchaudio_that_does_not_load(tmp_path: Path) -> None:
    proc = _run(["-m", "dr2studio.stack_check"], _broken_site(tmp_path), REPO)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert "torchaudio" in lines[0] and "undefined symbol" in lines[0]
    assert "torch==2.11.0 torchaudio==2.11.0" in lines[0] and "scripts/setup.sh" in lines[0]


def test_cli_reports_a_broken_torchaudio_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "song.wav"
    proc = _run(["-c", "from dr2studio.cli import run; run()", "generate", "--lyrics", str(REPO / "examples/lyrics/demo.lrc"),
                 "--style", "pop, 120 bpm", "--duration", "4", "-o", str(out)], _broken_site(tmp_path), tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "torchaudio does not load" in lines[0] and "torch==2.11.0" in lines[0], proc.stderr
    assert not out.exists() and list(tmp_path.glob("*.wav")) == []


def test_pins_and_lock_file_agree() -> None:
    pins = pinned_versions()
    assert pins["torch"] == "2.11.0" and pins["torchaudio"] == "2.11.0"
    lock = (REPO / "requirements" / "constraints.txt").read_text().splitlines()
    exact = dict(line.split("==", 1) for line in lock if re.match(r"^[A-Za-z0-9_.\-]+==", line))
    assert exact["torch"] == pins["torch"] and exact["torchaudio"] == pins["torchaudio"]
    # every package the project imports is locked to one version
    for dist in ("ray", "pedalboard", "soundfile", "numpy", "einops", "safetensors", "click", "python-osc", "mido",
                 "charset-normalizer", "music21", "phonemizer"):
        assert any(k.lower().replace("_", "-") == dist for k in exact), dist
