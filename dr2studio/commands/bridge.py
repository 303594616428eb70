"""``dr2studio bridge``: the OSC/MIDI server a DAW talks to."""
from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import click

from dr2studio.commands._studio_cli import DawType, LimitType
from dr2studio.requests import CFG_STRENGTH, DEFAULT_CFG_STRENGTH, DEFAULT_STEPS, STEPS

__all__ = ["bridge"]

log = logging.getLogger(__name__)

#: Where OSC/MIDI clients may open projects when no --projects-root is given (DR2STUDIO_PROJECTS_ROOT
#: overrides it). Any local program can talk to the bridge, so it must not open and write any folder.
DEFAULT_PROJECTS_ROOT = "~/Music/dr2studio"


def _project_roots(given: tuple[Path, ...], project: Path | None) -> list[Path]:
    """The folders sessions may be opened below: the given ones (which must exist), else the default
    root (which need not exist yet); plus ``--project`` itself, named by whoever started the bridge."""
    roots = []
    for root in given:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise click.ClickException(f"--projects-root {root}: no such folder")
        roots.append(root.resolve())
    if not roots:
        roots.append(Path(DEFAULT_PROJECTS_ROOT).expanduser().resolve())
    if project is not None:
        folder = Path(project).expanduser().resolve()
        if not any(folder == r or r in folder.parents for r in roots):
            roots.append(folder)
    return roots


def _load_style(path: Path | None):
    if path is None:
        return None
    from dr2studio.style.embedding import load_style_embedding

    try:
        return load_style_embedding(path)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"--style-embedding {path}: {exc}") from exc


def _engine(model: str | None, engine_url: str | None, device: str | None, style, max_pending: int):
    from dr2studio.engine import JobError, LocalEngine, ServeEngine

    if (model is None) == (engine_url is None):
        raise click.ClickException("give exactly one of --model DIR (run the model here) or --engine http://HOST:PORT")
    if engine_url is not None:
        try:
            engine = ServeEngine(engine_url, max_pending=max_pending, style_embedding=style)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            info = engine.health()
        except JobError as exc:
            engine.close()
            raise click.ClickException(str(exc)) from exc
        click.echo(f"engine: {engine_url} serving {info.get('model')}", err=True)
        return engine
    try:
        return LocalEngine(model, device=device, max_pending=max_pending, style_embedding=style)
    except (ValueError, OSError) as exc:  # StudioError, CheckpointError, ConfigError are ValueErrors
        raise click.ClickException(f"--model {model}: {exc}") from exc


@click.command("bridge")
@click.option("--model", metavar="DIR", help="Run this model in the bridge process (directory or hub id).")
@click.option("--engine", "engine_url", metavar="URL", help="Use a `dr2studio serve` deployment instead, e.g. http://127.0.0.1:8000.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (OSC and MIDI-over-TCP).")
@click.option("--osc-port", default=7100, show_default=True, type=click.IntRange(0, 65535), help="OSC port (UDP and TCP).")
@click.option("--no-osc-tcp", is_flag=True, help="Listen for OSC on UDP only.")
@click.option("--style-embedding", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Default style (.npy/.safetensors, 512 values) for sessions without /dr2/song/style.")
@click.option("--midi-port", metavar="NAME", help="Open a virtual MIDI port (rtmidi; macOS and Linux with ALSA).")
@click.option("--midi-tcp", type=click.IntRange(0, 65535), metavar="PORT", help="Accept MIDI over TCP (mido socket port).")
@click.option("--watch", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Import MIDI files dropped into this folder.")
@click.option("--project", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Open this project at start.")
@click.option("--daw", type=DawType(), default="generic", show_default=True, help="DAW of --project.")
@click.option("--projects-root", "projects_roots", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              envvar="DR2STUDIO_PROJECTS_ROOT",
              help=f"Only allow sessions in folders below this one (repeatable; default {DEFAULT_PROJECTS_ROOT}, "
                   "or DR2STUDIO_PROJECTS_ROOT; --project is always allowed; '/' allows any folder).")
@click.option("--steps", default=DEFAULT_STEPS, show_default=True, type=LimitType(STEPS),
              help="Time-grid points per block (steps-1 Euler steps).")
@click.option("--cfg", "cfg_strength", default=DEFAULT_CFG_STRENGTH, show_default=True, type=LimitType(CFG_STRENGTH),
              help="Guidance strength.")
@click.option("--preset", default="clean", show_default=True, help="Effect preset for stems (shipped name or .json).")
@click.option("--separate", is_flag=True, help="Also write vocals/drums/bass/other stems (Hybrid Demucs).")
@click.option("--separator-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Local Hybrid Demucs weights for --separate (default: torch hub cache / download).")
@click.option("--sample-rate", type=click.IntRange(8000, 192000), help="Resample stems to the project's rate.")
@click.option("--max-pending", default=8, show_default=True, type=click.IntRange(1, 1000), help="Jobs that may wait in the queue.")
@click.option("--device", help="torch device for --model (default: cuda if available).")
@click.option("--max-connections", type=click.IntRange(1, 1024), show_default="16",
              help="TCP clients at once on each of the OSC and MIDI-over-TCP ports; one more gets an error and is closed.")
@click.option("--idle-timeout", type=click.FloatRange(1.0, 86400.0), show_default="600",
              help="Close an OSC TCP connection with no traffic either way for this many seconds (/dr2/ping keeps it).")
@click.option("--send-stall", type=click.FloatRange(0.1, 3600.0), show_default="10",
              help="Disconnect a TCP client that takes no bytes for this many seconds while events wait for it.")
def bridge(model, engine_url, host, osc_port, no_osc_tcp, style_embedding, midi_port, midi_tcp, watch, project, daw,
           projects_roots, steps, cfg_strength, preset, separate, separator_weights, sample_rate, max_pending, device,
           max_connections, idle_timeout, send_stall) -> None:
    """Run the OSC (and optionally MIDI) bridge until Ctrl-C.

    \b
    Examples:
      dr2studio bridge --model ./dr2-model --style-embedding pop.npy
      dr2studio bridge --engine http://127.0.0.1:8000 --midi-tcp 7101 --watch ~/Music/dr2-inbox

    Prints one JSON line with the listening addresses on stdout. The OSC address space is in
    docs/bridge.md; replies go to clients that sent /dr2/subscribe.
    """
    from dr2studio.audio.effects import load_preset
    from dr2studio.bridge import BridgeApp, BridgeError, BridgeOptions
    from dr2studio.config import ConfigError

    try:
        load_preset(preset)
    except ConfigError as exc:
        raise click.ClickException(f"--preset: {exc}") from exc
    roots = _project_roots(projects_roots, project)  # before the model loads: a bad root fails at once
    style = _load_style(style_embedding)
    engine = _engine(model, engine_url, device, style, max_pending)
    options = BridgeOptions(
        host=host, osc_port=osc_port, osc_tcp=not no_osc_tcp, midi_port=midi_port, midi_tcp=midi_tcp, watch=watch,
        project=project, daw=daw, project_roots=roots, steps=steps, cfg_strength=cfg_strength,
        max_pending=max_pending,
        **{k: v for k, v in (("max_connections", max_connections), ("idle_timeout", idle_timeout),
                             ("send_stall_s", send_stall)) if v is not None},  # unset: the bridge's own limits
        stem_options={"preset": preset, "separate": separate, "sample_rate": sample_rate,
                      "separator_weights": str(separator_weights) if separator_weights else None},
    )
    try:
        app = BridgeApp(engine, options, style_embedding=style)
    except (BridgeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo(json.dumps(app.addresses()))
        click.echo(f"bridge ready: OSC {app.osc.host}:{app.osc.udp_port}; Ctrl-C to stop", err=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        app.close()
        click.echo("bridge stopped", err=True)
