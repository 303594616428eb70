"""Latency of the OSC bridge: from an OSC command to accepted, first progress, first stem file, done.

Runs a bridge in this process (``--model DIR``, default: a freshly built tiny random model; or
``--engine http://...`` for a ``dr2studio serve`` deployment), drives it with a UDP OSC client over
loopback like a DAW would, and prints one table row per job kind (median / min / max over repeats).

    python benchmarks/bridge.py                        # tiny model, CPU
    python benchmarks/bridge.py --model ./dr2-model --seconds 30 --steps 32 --device cuda
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(600)

    def send(self, address: str, *args) -> None:
        self.sock.sendto(build_msg(address, list(args)).dgram, ("127.0.0.1", self.port))

    def state(self) -> dict:
        self.send("/dr2/session/state")
        while True:
            msg = OscMessage(self.sock.recv(65535))
            if msg.address == "/dr2/session/state":
                return json.loads(msg.params[0])

    def timed_job(self, address: str, job_id: str, *args) -> dict[str, float]:
        """Send one job request; seconds from the send to each milestone."""
        marks: dict[str, float] = {}
        t0 = time.perf_counter()
        self.send(address, job_id, *args)
        while True:
            msg = OscMessage(self.sock.recv(65535))
            now = time.perf_counter() - t0
            if msg.address == "/dr2/error":
                raise RuntimeError(f"{address} refused: {msg.params}")
            if not msg.address.startswith("/dr2/job/") or msg.params[0] != job_id:
                continue
            name = msg.address.rsplit("/", 1)[1]
            if name == "stem" and "stem" not in marks and not Path(msg.params[2]).is_file():
                raise RuntimeError(f"stem event for a missing file {msg.params[2]}")
            marks.setdefault(name, now)
            if name == "error":
                raise RuntimeError(f"job {job_id} failed: {msg.params}")
            if name == "done":
                return marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: build a tiny random one)")
    parser.add_argument("--engine", help="use a dr2studio serve deployment at this URL instead of --model")
    parser.add_argument("--device", help="torch device for --model")
    parser.add_argument("--seconds", type=float, default=8.0, help="song length of the generate job")
    parser.add_argument("--steps", type=int, default=4, help="sampler steps")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from dr2studio.bridge import BridgeApp, BridgeOptions
    from dr2studio.engine import LocalEngine, ServeEngine

    with tempfile.TemporaryDirectory(prefix="dr2-bench-") as tmp:
        style = torch.randn(512, generator=torch.Generator().manual_seed(0))
        if args.engine:
            engine = ServeEngine(args.engine, style_embedding=style)
            label = args.engine
        else:
            model = args.model
            if model is None:
                from dr2studio.lab.testing import build_tiny_model

                model = str(build_tiny_model(Path(tmp) / "tiny"))
            t = time.perf_counter()
            engine = LocalEngine(model, device=args.device, style_embedding=style)
            label = f"{args.model or 'tiny random model'} (loaded in {time.perf_counter() - t:.1f} s)"
        project = Path(tmp) / "project"
        project.mkdir()
        app = BridgeApp(engine, BridgeOptions(osc_port=0, steps=args.steps), style_embedding=style)
        client = Client(app.osc.udp_port)
        try:
            bpm = 120.0
            beats = args.seconds * bpm / 60.0
            client.send("/dr2/session/open", str(project), "generic")
            client.send("/dr2/song/tempo", bpm)
            client.send("/dr2/section/define", "verse1", "verse", 0.0, beats / 2)
            client.send("/dr2/section/define", "chorus1", "chorus", beats / 2, beats / 2)
            client.send("/dr2/lyrics/set", "verse1", "walking down the empty street\nlights are fading at my feet")
            client.send("/dr2/lyrics/set", "chorus1", "sing it loud\nsing it clear")
            client.send("/dr2/subscribe")
            client.timed_job("/dr2/gen/song", "warmup", float(args.seconds), 0)
            rows: dict[str, list[dict[str, float]]] = {"song": [], "continue": [], "regenerate": []}
            for i in range(args.repeats):
                rows["song"].append(client.timed_job("/dr2/gen/song", f"song{i}", float(args.seconds), i + 1))
                end_beats = client.state()["song_seconds"] * bpm / 60.0  # continue from the end of the song
                rows["continue"].append(client.timed_job("/dr2/gen/continue", f"cont{i}", end_beats, 8.0, "chorus1", i + 1))
                rows["regenerate"].append(client.timed_job("/dr2/gen/regenerate", f"regen{i}", "chorus1", i + 1))
        finally:
            client.sock.close()
            app.close()

    print(f"bridge latency, {label}; engine {engine.describe()}; song {args.seconds:g} s, "
          f"continue 4 s, steps {args.steps}, {args.repeats} repeats")
    print(f"{'job':<11} {'milestone':<10} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for kind, runs in rows.items():
        for milestone in ("accepted", "progress", "stem", "done"):
            values = [r[milestone] * 1000 for r in runs if milestone in r]
            if values:
                print(f"{kind:<11} {milestone:<10} {statistics.median(values):>10.1f} {min(values):>8.1f} {max(values):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
