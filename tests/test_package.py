"""The package surface: public names resolve, imports stay light, the CLI group lists its commands."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import dr2studio
from dr2studio.cli import main


def test_every_public_name_resolves() -> None:
    for name in dr2studio.__all__:
        assert getattr(dr2studio, name) is not None, name


def test_import_does_not_load_heavy_optional_modules() -> None:
    code = "import sys, dr2studio; bad = [m for m in ('ray', 'pythonosc', 'phonemizer', 'onnxruntime', 'pedalboard') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_cli_lists_commands_and_version() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for cmd in ("generate", "extend", "infill", "stems", "lyrics", "serve", "bridge"):
        assert cmd in result.output
    assert dr2studio.__version__ in runner.invoke(main, ["--version"]).output
    unknown = runner.invoke(main, ["no-such-command"])
    assert unknown.exit_code != 0 and "No such command" in unknown.output
