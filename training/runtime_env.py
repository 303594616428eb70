"""The Ray runtime environment that runs a submitted training job in this Python environment.

Why: ``ray job submit -- python -m training.block_fm`` runs its entry point through a shell on the
head node, with the PATH the head was started with. A head started as ``.venv/bin/ray start --head``
without the venv activated therefore finds no ``python`` (or the system's, without torch). This
prints a runtime env (for ``--runtime-env-json``) that puts this interpreter's folder first on the
job's PATH (Ray expands ``${PATH}`` to the head's own) and names this interpreter as every worker's
``py_executable``, so the driver and the Ray Train workers all run where dr2studio is installed::

    ray job submit --working-dir . --runtime-env-json "$(.venv/bin/python -m training.runtime_env)" \\
        -- python -m training.block_fm --smoke

The paths are this machine's: on a multi-node cluster every node needs the same environment at the
same path (or leave the option out where the nodes' own ``python`` has dr2studio).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["job_runtime_env", "main"]


def job_runtime_env(python: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"env_vars": {"PATH": ...}, "py_executable": ...}`` for ``python`` (default: this interpreter).

    The path is kept as given, not resolved: a venv's ``bin/python`` is a symlink to a base
    interpreter that does not see the venv's packages.
    """
    exe = Path(python or sys.executable).absolute()
    if not os.access(exe, os.X_OK) or exe.is_dir():
        raise ValueError(f"{exe} is not an executable Python interpreter")
    return {"env_vars": {"PATH": f"{exe.parent}{os.pathsep}${{PATH}}"}, "py_executable": str(exe)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", help="interpreter the job should use (default: the one running this script)")
    args = p.parse_args(argv)
    try:
        env = job_runtime_env(args.python)
    except ValueError as exc:
        raise SystemExit(f"runtime_env.py: {exc}") from exc
    sys.stdout.write(json.dumps(env) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
