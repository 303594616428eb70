"""Every package dr2studio imports is declared: the core's in the default install, the rest in an extra."""
from __future__ import annotations

import ast
import functools
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dr2studio"
# Modules that belong to an extra: what they import may come from that extra.
EXTRA_MODULES = ("bridge/", "serve.py", "serve_proxy.py", "engine/", "commands/serve.py", "commands/bridge.py", "style/muq.py",
                 "checkpoints.py", "hub.py", "data/", "lab/testing.py", "audio/transcribe.py", "ui/", "commands/ui.py")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _requirements() -> tuple[set[str], set[str]]:
    core, extras = set(), set()
    for req in metadata.requires("dr2studio") or []:
        name = re.split(r"[\s\[<>=!;~]", req, maxsplit=1)[0].lower().replace("_", "-")
        (extras if "extra ==" in req else core).add(name)
    return core, extras


@functools.cache
def _all_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in _all_distributions().get(module, [])}


def test_every_third_party_import_is_declared() -> None:
    core, extras = _requirements()
    stdlib = set(sys.stdlib_module_names) | {"dr2studio", "__future__"}
    optional_probes = {"typeguard", "muq", "rtmidi", "lupa", "music21"}  # imported inside try/except with a fallback
    # basic-pitch cannot be declared: its wheel requires TensorFlow on Linux. scripts/setup.sh installs it
    # with --no-deps; audio/transcribe.py names that command when it is missing
    optional_probes |= {"basic_pitch"}
    problems: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        allowed = core | extras if rel.startswith(EXTRA_MODULES) else core
        for module in sorted(_imports(path) - stdlib - optional_probes):
            dists = _distributions(module)
            if not dists:
                problems.append(f"{rel}: imports {module}, which no installed distribution provides")
            elif not dists & allowed:
                problems.append(f"{rel}: imports {module} ({', '.join(sorted(dists))}), not declared"
                                f" {'in any extra' if rel.startswith(EXTRA_MODULES) else 'in the default install'}")
    assert not problems, "\n".join(problems)
