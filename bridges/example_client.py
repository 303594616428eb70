"""Example DAW-side client: plan a song from a lyrics file, generate it through the bridge, and hand
the stems to the DAW.

    # Ableton Live with AbletonOSC installed (it listens on 11000 and answers on 11001):
    python bridges/example_client.py song.lrc --project "~/Music/My Song Project" --daw ableton --ableton

    # REAPER with an OSC control surface listening on 8000 and dr2_import_takes.lua loaded as an action:
    python bridges/example_client.py song.lrc --project ~/Music/song --daw reaper --reaper-action _RS1a2b3c --reaper-osc 127.0.0.1:8000

Each ``[verse]``/``[chorus]``/... tag of the lyrics file becomes a section of ``--bars`` bars on the
timeline. With ``--ableton`` the tempo is read from Live (``/live/song/get/tempo``) and the stems are
printed for drag-in from Samples/Imported/dr2; for placement on the arrangement, start the bridge with
``--ableton`` and install the Remote Script in bridges/ableton (docs/ableton.md) instead.
With ``--reaper-action`` the client triggers the import script through REAPER's OSC surface
(``/action/<command id>``) when the job is done, and REAPER places the stems at their positions.
"""
from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from pathlib import Path

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

_TAG = re.compile(r"^\s*\[([A-Za-z][A-Za-z -]*?)\s*\d*\]\s*$")


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def split_sections(text: str) -> list[tuple[str, list[str]]]:
    """``[(kind, lines)]`` from lyrics with structure tags (untagged text becomes a verse)."""
    sections: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = re.sub(r"\[\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?\]", "", raw).strip()
        tag = _TAG.match(line)
        if tag:
            sections.append((tag.group(1).lower(), []))
        elif line:
            if not sections:
                sections.append(("verse", []))
            sections[-1][1].append(line)
    return sections


def ableton_tempo(timeout: float = 2.0) -> float | None:
    """Ask AbletonOSC for Live's tempo; ``None`` when Live does not answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 11001))
        sock.settimeout(timeout)
        sock.sendto(build_msg("/live/song/get/tempo", []).dgram, ("127.0.0.1", 11000))
        msg = OscMessage(sock.recv(65535))
        return float(msg.params[0]) if msg.address == "/live/song/get/tempo" else None
    except OSError:
        return None
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lyrics", type=Path)
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--daw", choices=["ableton", "reaper", "generic"], default="generic")
    p.add_argument("--bridge", default="127.0.0.1:7100", help="host:port of dr2studio bridge")
    p.add_argument("--bpm", type=float, default=120.0)
    p.add_argument("--bars", type=int, default=8, help="bars per section")
    p.add_argument("--style", help="style prompt (needs a style encoder in the bridge's model)")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--ableton", action="store_true", help="read the tempo from Live via AbletonOSC")
    p.add_argument("--reaper-action", help="command id of dr2_import_takes.lua, e.g. _RS1a2b3c")
    p.add_argument("--reaper-osc", default="127.0.0.1:8000", help="host:port of REAPER's OSC control surface")
    args = p.parse_args(argv)

    bpm = (ableton_tempo() if args.ableton else None) or args.bpm
    sections = split_sections(args.lyrics.read_text(encoding="utf-8"))
    if not sections:
        p.error(f"{args.lyrics} holds no lyrics")
    bridge = _hostport(args.bridge)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(900)

    def send(address: str, *values) -> None:
        sock.sendto(build_msg(address, list(values)).dgram, bridge)

    send("/dr2/subscribe")
    send("/dr2/session/open", str(args.project.expanduser().resolve()), args.daw)
    send("/dr2/song/tempo", float(bpm))
    if args.style:
        send("/dr2/song/style", args.style)
    beats = args.bars * 4.0
    for i, (kind, lines) in enumerate(sections):
        sec_id = f"{kind.replace(' ', '-')}-{i + 1}"
        send("/dr2/section/define", sec_id, kind.replace(" ", "-"), i * beats, beats)
        if lines:
            send("/dr2/lyrics/set", sec_id, "\n".join(lines))  # keep each under ~8 KB, or use /dr2/lyrics/chunk
    job = f"song-{int(time.time())}"
    send("/dr2/gen/song", job, 0.0, args.seed)
    print(f"{job}: {len(sections)} sections at {bpm:g} bpm", file=sys.stderr)
    while True:
        msg = OscMessage(sock.recv(65535))
        if msg.address == "/dr2/error":
            print(f"error from {msg.params[0]}: {msg.params[1]}", file=sys.stderr)
            return 1
        if not msg.address.startswith("/dr2/job/") or msg.params[0] != job:
            continue
        if msg.address == "/dr2/job/progress":
            print(f"\r{msg.params[2]:<8} {msg.params[1] * 100:5.1f}%", end="", file=sys.stderr)
        elif msg.address == "/dr2/job/stem":
            print(f"\n{msg.params[1]}: {msg.params[2]} at beat {msg.params[3]:g} ({msg.params[4]:.2f} s)")
        elif msg.address == "/dr2/job/error":
            print(f"\njob failed ({msg.params[1]}): {msg.params[2]}", file=sys.stderr)
            return 1
        elif msg.address == "/dr2/job/done":
            if args.reaper_action:
                action = args.reaper_action if args.reaper_action.startswith("_") else f"_{args.reaper_action}"
                sock.sendto(build_msg(f"/action/{action}", []).dgram, _hostport(args.reaper_osc))
            return 0


if __name__ == "__main__":
    sys.exit(main())
