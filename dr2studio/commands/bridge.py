"""``dr2studio bridge``: the OSC/MIDI server a DAW talks to."""
from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import click

from dr2studio.commands._studio_cli import DawType, LimitType
from dr2studio.requests import CFG_STRENGTH, DEFAULT_CFG_STRENGTH, DEFAULT_STEPS, PLACE_TIMEOUT, STEPS

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


def _reaper_action(target: str | None, command_id: str | None):
    """The import action to trigger in REAPER after each take, or None; both options or neither."""
    if target is None and command_id is None:
        return None
    if target is None or command_id is None:
        raise click.ClickException("--reaper-osc HOST:PORT and --reaper-action COMMAND_ID go together")
    from dr2studio.bridge.reaper_surface import ReaperAction, parse_action_target
    from dr2studio.bridge.session import BridgeError

    try:
        return ReaperAction(*parse_action_target(target), command_id)
    except BridgeError as exc:
        raise click.ClickException(str(exc)) from exc


def _ableton_link(bridge, target: str | None, reply_port: int, script_port: int, place_timeout: float):
    """Follow Live through AbletonOSC and place takes with the DR2Studio Remote Script (docs/ableton.md)."""
    if target is None:
        return None
    from dr2studio.bridge.ableton import LIVE_PORT, AbletonFollower, AbletonLink, LivePlacer, parse_hostport
    from dr2studio.bridge.session import BridgeError

    try:
        live = parse_hostport(target, LIVE_PORT)
        placer = LivePlacer(live[0], script_port, place_timeout) if script_port else None
        return AbletonLink(bridge, AbletonFollower(bridge, live, reply_port=reply_port), placer).start()
    except (ValueError, BridgeError) as exc:
        raise click.ClickException(f"--ableton {target}: {exc}") from exc


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
@click.option("--reaper-osc", metavar="HOST:PORT",
              help="REAPER's OSC listen port (its OSC surface's 'Local listen port'): after each take the bridge "
                   "sends /action/<--reaper-action> there (docs/reaper.md).")
@click.option("--reaper-action", metavar="COMMAND_ID",
              help="Command id of the dr2_import_takes.lua action in REAPER's action list, e.g. _RS7f3c...")
@click.option("--ableton", "ableton_target", metavar="HOST[:PORT]",
              help="Follow Ableton Live's tempo, time signature and locators through AbletonOSC (port 11000) "
                   "and place takes with the DR2Studio Remote Script (docs/ableton.md).")
@click.option("--ableton-reply-port", default=11001, show_default=True, type=click.IntRange(1, 65535),
              help="Port AbletonOSC answers on (it is fixed in AbletonOSC).")
@click.option("--ableton-script-port", default=11010, show_default=True, type=click.IntRange(0, 65535),
              help="UDP port of the DR2Studio Remote Script in Live; 0: do not place takes, only write them.")
@click.option("--ableton-place-timeout", default=5.0, show_default=True, type=LimitType(PLACE_TIMEOUT),
              help="Seconds to wait for the Remote Script before the take stays in Samples/Imported/dr2 only.")
@click.option("--ui-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Also serve the take browser (docs/ui.md) on this port of --host, over the open session's project.")
def bridge(model, engine_url, host, osc_port, no_osc_tcp, style_embedding, midi_port, midi_tcp, watch, project, daw,
           projects_roots, steps, cfg_strength, preset, separate, separator_weights, sample_rate, max_pending, device,
           max_connections, idle_timeout, send_stall, reaper_osc=None, reaper_action=None, ableton_target=None,
           ableton_reply_port=11001, ableton_script_port=11010, ableton_place_timeout=5.0, ui_port=None) -> None:
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
    reaper = _reaper_action(reaper_osc, reaper_action)  # likewise
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
        if reaper is not None:
            reaper.close()
        raise click.ClickException(str(exc)) from exc
    from dr2studio.bridge.reaper_surface import ReaperSurface

    surface = ReaperSurface(app.bridge, reaper).attach(app.osc)  # REAPER's OSC surface may talk to this port
    try:
        ableton = _ableton_link(app.bridge, ableton_target, ableton_reply_port, ableton_script_port,
                                ableton_place_timeout)
    except click.ClickException:
        surface.close()
        app.close()
        raise
    ui_server = None
    if ui_port is not None:  # the take browser on the same engine, beside OSC (docs/ui.md)
        from dr2studio.ui.server import UiServer, follow_bridge

        try:
            ui_server = UiServer(follow_bridge(app.bridge, project), engine=engine, host=host, port=ui_port,
                                 steps=steps, cfg_strength=cfg_strength)
        except (OSError, RuntimeError) as exc:
            surface.close()
            if ableton is not None:
                ableton.close()
            app.close()
            raise click.ClickException(f"--ui-port {ui_port}: {exc}") from exc
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo(json.dumps({**app.addresses(), **({"ui": ui_server.url} if ui_server is not None else {})}))
        click.echo(f"bridge ready: OSC {app.osc.host}:{app.osc.udp_port}; Ctrl-C to stop", err=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if ui_server is not None:
            ui_server.close()
        surface.close()
        if ableton is not None:
            ableton.close()
        app.close()
        click.echo("bridge stopped", err=True)
