"""The layering of dr2studio is enforced, not hoped for: the import-linter contracts in pyproject.toml hold,
and the same contracts break on a copy of the package with forbidden imports (so they cannot pass vacuously).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _contracts() -> list[dict]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert config["root_package"] == "dr2studio"
    return config["contracts"]


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports (from this interpreter's environment) on the ``dr2studio`` package found in ``cwd``."""
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", script, "--no-cache", "--no-logo", str(PYPROJECT)],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


def _verdicts(output: str) -> dict[str, str]:
    """``{contract name: "KEPT" | "BROKEN"}`` from the report (long names wrap onto a second line)."""
    flat = " ".join(output.split())
    return {c["name"]: ("KEPT" if f"{c['name']} KEPT" in flat else "BROKEN" if f"{c['name']} BROKEN" in flat else "?")
            for c in _contracts()}


def test_contracts_cover_the_promised_rules() -> None:
    kinds = {c["id"]: c["type"] for c in _contracts()}
    assert kinds == {"acyclic-folders": "acyclic_siblings", "model-stack": "layers",
                     "no-upward-imports": "forbidden", "lab-out-of-product": "protected"}


def test_the_package_keeps_every_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_verdicts(result.stdout).values()) == {"KEPT"}, result.stdout


def test_the_linter_catches_each_kind_of_violation(tmp_path: Path) -> None:
    """A copy of the package with three bad imports: every contract must report BROKEN and name the import."""
    copy = tmp_path / "dr2studio"
    shutil.copytree(ROOT / "dr2studio", copy, ignore=shutil.ignore_patterns("__pycache__", "assets", "*.pyc"))
    (copy / "models" / "_upward.py").write_text("import dr2studio.vae.inversion\n")  # models -> vae: a cycle, a layer
    (copy / "audio" / "_studio.py").write_text("import dr2studio.studio\n")  # domain code -> the Studio
    (copy / "flow" / "_lab.py").write_text("import dr2studio.lab\n")  # product -> lab code
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert set(_verdicts(result.stdout).values()) == {"BROKEN"}, result.stdout
    flat = " ".join(result.stdout.split())
    for importer, imported in (("dr2studio.models._upward", "dr2studio.vae.inversion"),
                               ("dr2studio.audio._studio", "dr2studio.studio"),
                               ("dr2studio.flow._lab", "dr2studio.lab")):
        assert f"{importer} -> {imported}" in flat, result.stdout
