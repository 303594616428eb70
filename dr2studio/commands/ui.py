"""``dr2studio ui PROJECT``: the take browser, a local web page over a project's takes."""
from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from dr2studio.commands._studio_cli import DEMO_MODEL, LimitType
from dr2studio.requests import CFG_STRENGTH, DEFAULT_CFG_STRENGTH, DEFAULT_STEPS, STEPS

__all__ = ["ui"]


@click.command("ui")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback lets other machines play, rate and render takes.")
@click.option("--port", default=7180, show_default=True, type=click.IntRange(0, 65535), help="HTTP port (0: any free one).")
@click.option("--model", metavar="DIR", help="Model for extend / regenerate / new seed (directory or hub id; default: the shipped demo model).")
@click.option("--engine", "engine_url", metavar="URL", help="Run actions on a `dr2studio serve` deployment instead, e.g. http://127.0.0.1:8000.")
@click.option("--no-model", is_flag=True, help="Browse, play and rate only: no model is loaded and actions are off.")
@click.option("--device", help="torch device for --model (default: cuda if available).")
@click.option("--steps", default=DEFAULT_STEPS, show_default=True, type=LimitType(STEPS),
              help="Time-grid points per block, for takes that do not record theirs.")
@click.option("--cfg", "cfg_strength", default=DEFAULT_CFG_STRENGTH, show_default=True, type=LimitType(CFG_STRENGTH),
              help="Guidance strength, for takes that do not record theirs.")
def ui(project, host, port, model, engine_url, no_model, device, steps, cfg_strength) -> None:
    """Serve the take browser for PROJECT (a folder with dr2studio.json) until Ctrl-C.

    \b
    Examples:
      dr2studio ui "MySong Project"                    # open http://127.0.0.1:7180/
      dr2studio ui "MySong Project" --model ./dr2-model --port 8080
      dr2studio ui "MySong Project" --no-model         # browse, play and rate only

    Each take shows its waveform, spectrogram, sections and the model's blocks on a bar ruler, lyrics,
    seed, settings, edit history and stems; play, loop and A/B them, rate them, and extend, regenerate
    a section or sample again with a new seed. Prints {"url": ...} on stdout once it listens.
    """
    from dr2studio.ui.server import require_web_stack

    try:
        require_web_stack()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    from dr2studio.ui import ProjectView, UiError, UiServer

    if sum(bool(x) for x in (model, engine_url, no_model)) > 1:
        raise click.ClickException("give at most one of --model, --engine and --no-model")
    try:
        view = ProjectView(project)
        view.manifest()  # an unreadable manifest fails here, before a model loads
    except UiError as exc:
        raise click.ClickException(str(exc)) from exc
    engine = None
    if not no_model:
        from dr2studio.commands.bridge import _engine

        if model is None and engine_url is None:
            model = str(DEMO_MODEL)
            click.echo(f"no --model given: actions use the shipped demo model ({model})", err=True)
        engine = _engine(model, engine_url, device, None, 4)
    try:
        server = UiServer(lambda: view, engine=engine, host=host, port=port, steps=steps, cfg_strength=cfg_strength)
    except OSError as exc:
        if engine is not None:
            engine.close()
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo(json.dumps({"url": server.url, "project": str(view.root), "engine": engine.describe() if engine else None}))
        click.echo(f"take browser at {server.url} for {view.root}; Ctrl-C to stop", err=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        if engine is not None:
            engine.close()
        click.echo("take browser stopped", err=True)
