"""The ``dr2studio`` command: a Click group whose subcommands live in ``dr2studio.commands``.

Subcommands are imported only when invoked, so ``dr2studio --help`` is fast and a missing optional
extra (Ray, python-osc) only affects the command that needs it.
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

from dr2studio import __version__

# name -> "module:attribute" of a click.Command
_COMMANDS: dict[str, str] = {
    "generate": "dr2studio.commands.generate:generate",
    "extend": "dr2studio.commands.extend:extend",
    "infill": "dr2studio.commands.infill:infill",
    "stems": "dr2studio.commands.stems:stems",
    "lyrics": "dr2studio.commands.lyrics:lyrics",
    "serve": "dr2studio.commands.serve:serve",
    "bridge": "dr2studio.commands.bridge:bridge",
    "ui": "dr2studio.commands.ui:ui",
    "rate": "dr2studio.commands.rate:rate",
    "prefs": "dr2studio.commands.prefs:prefs",
    "eval": "dr2studio.commands.eval:eval_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("dr2studio.commands"):
                return None  # command not built yet in this checkout
            raise
        return getattr(module, attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dr2studio")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Generate, extend, infill and render songs with DiffRhythm 2."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def run() -> None:
    """The console entry point: :func:`main`, with a broken install reported as one line, not a traceback.

    A torch/torchaudio pair that does not load together (or a missing package) fails deep inside an
    import with a chained traceback; :func:`dr2studio.stack_check.explain_import_failure` names the fix.
    """
    try:
        main()
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        from dr2studio.stack_check import explain_import_failure

        line = explain_import_failure(exc)
        if line is None:
            raise
        sys.stderr.write(line + "\n")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
