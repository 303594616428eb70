"""The same bad value gets the same refusal, at entry, through every front door.

Each case sends one invalid value through the CLI (click runner, demo model), the Python ``Studio``
(demo model), the engine (``LocalEngine.submit`` with a ``JobRequest``), the Serve wire format
(``parse_payload``, the body check behind ``POST /jobs``) and OSC (a real bridge over loopback), and
checks that each refuses it with the message of :mod:`dr2studio.requests`, writing no file. Doors that
cannot carry a value say so in the table (OSC has no crossfade or infill range, and seed -1 there
means "random" by protocol; Studio and the engine know no DAW).
"""
from __future__ import annotations

import base64
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pythonosc.osc_message import OscMessage

from daw_helpers import UdpClient
from dr2studio.bridge import BridgeApp, BridgeOptions
from dr2studio.cli import main
from dr2studio.demo import demo_model_dir
from dr2studio.engine import JobError, JobRequest, LocalEngine
from dr2studio.engine.wire import parse_payload, song_to_bytes
from dr2studio.requests import RequestError
from dr2studio.song import Song
from dr2studio.studio import Studio, StudioError

LYRICS = "[verse]\nhello world\n"
STYLE = "pop, piano"
TIMEOUT = 30.0


@dataclasses.dataclass
class Case:
    """One invalid value and how each door is given it (None: that door cannot carry it)."""

    name: str
    field: str
    studio: Callable[[Studio, Song], Any] | None
    cli: list[str] | None
    engine: dict[str, Any] | None
    osc: list[tuple[str, tuple]] | None = None  # messages to send; the last one is refused


def _generate(duration: float = 1.0, **kw: Any) -> Callable[[Studio, Song], Any]:
    return lambda studio, song: studio.generate(LYRICS, STYLE, duration, **(dict(steps=2, seed=1) | kw))


def _extend(**kw: Any) -> Callable[[Studio, Song], Any]:
    return lambda studio, song: studio.extend(song, LYRICS, style=STYLE, **(dict(steps=2, seed=1) | kw))


GEN = ["generate", "--lyrics", "{lyrics}", "--style", STYLE, "--duration", "1.0", "--steps", "2"]
EXT = ["extend", "{song}", "--lyrics", "{lyrics}", "--style", STYLE, "--seconds", "1.0", "--steps", "2"]
GEN_JOB = dict(kind="generate", duration=1.0, steps=2)
EXT_JOB = dict(kind="extend", seconds=1.0, steps=2)

CASES = [
    Case("steps 1", "steps", _generate(steps=1), [*GEN, "--steps", "1"], GEN_JOB | dict(steps=1),
         [("/dr2/gen/options", (1, 2.0))]),
    Case("steps 1001", "steps", _generate(steps=1001), [*GEN, "--steps", "1001"], GEN_JOB | dict(steps=1001),
         [("/dr2/gen/options", (1001, 2.0))]),
    Case("cfg -1", "cfg_strength", _generate(cfg_strength=-1.0), [*GEN, "--cfg", "-1.0"],
         GEN_JOB | dict(cfg_strength=-1.0), [("/dr2/gen/options", (32, -1.0))]),
    Case("cfg 51", "cfg_strength", _generate(cfg_strength=51.0), [*GEN, "--cfg", "51.0"],
         GEN_JOB | dict(cfg_strength=51.0), [("/dr2/gen/options", (32, 51.0))]),
    Case("duration 0", "duration", _generate(duration=0.0), [*GEN, "--duration", "0.0"],
         GEN_JOB | dict(duration=0.0), [("/dr2/gen/continue", ("d0", 0.0, 0.0, "v1"))]),  # no song yet: a new one
    Case("duration 601", "duration", _generate(duration=601.0), [*GEN, "--duration", "601.0"],
         GEN_JOB | dict(duration=601.0), [("/dr2/gen/song", ("d601", 601.0))]),
    Case("extend seconds 0", "seconds", _extend(seconds=0.0), [*EXT, "--seconds", "0.0"],
         EXT_JOB | dict(seconds=0.0), [("<song>", ()), ("/dr2/gen/continue", ("s0", 0.0, 0.0, "v1"))]),
    Case("infill start >= end", "start", lambda studio, song: studio.infill(song, 2.0, 1.0, LYRICS, style=STYLE, steps=2),
         ["infill", "{song}", "--start", "2.0", "--end", "1.0", "--lyrics", "{lyrics}", "--style", STYLE, "--steps", "2"],
         dict(kind="infill", start=2.0, end=1.0, steps=2)),
    Case("tempo 5", "tempo", _generate(tempo=5.0), [*GEN, "--tempo", "5.0"], GEN_JOB | dict(tempo=5.0),
         [("/dr2/song/tempo", (5.0,))]),
    Case("seed -1", "seed", _generate(seed=-1), [*GEN, "--seed", "-1"], GEN_JOB | dict(seed=-1)),
    Case("crossfade 3", "crossfade", _extend(crossfade=3.0), [*EXT, "--crossfade", "3.0"],
         EXT_JOB | dict(crossfade=3.0)),
    Case("daw logic", "daw", None, ["stems", "{song}", "--project", "{project}", "--daw", "logic"], None,
         [("/dr2/session/open", ("{project}", "logic"))]),
]


@pytest.fixture(scope="module")
def studio() -> Studio:
    return Studio.load(device="cpu")


@pytest.fixture(scope="module")
def song(studio: Studio) -> Song:
    """A 3 s song to edit (silence with sidecar latents: refusals never get as far as its sound)."""
    frames = round(3 * studio.frame_rate)
    return Song(audio=torch.zeros(1, frames * studio.hop_length), sample_rate=studio.sample_rate,
                latents=torch.zeros(1, frames, int(studio.dit.config.mel_dim)), model=studio.fingerprint)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, song: Song) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("doors")
    (root / "song.lrc").write_text(LYRICS, encoding="utf-8")
    song.save(root / "song.wav")
    (root / "project").mkdir()
    return {"root": root, "lyrics": root / "song.lrc", "song": root / "song.wav", "project": root / "project"}


def _refusal(studio: Studio, song: Song, case: Case) -> RequestError:
    """The Studio's refusal: the reference every other door must repeat word for word."""
    assert case.studio is not None
    with pytest.raises(RequestError) as info:
        case.studio(studio, song)
    assert isinstance(info.value, StudioError) and info.value.field == case.field and info.value.code == "bad_request"
    return info.value


def _expected(studio: Studio, song: Song, case: Case) -> str:
    if case.studio is not None:
        return str(_refusal(studio, song, case))
    from dr2studio.requests import check_daw

    with pytest.raises(RequestError) as info:
        check_daw("logic")
    return str(info.value)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_studio_engine_and_wire_refuse_alike(case: Case, studio: Studio, song: Song, files: dict[str, Path]) -> None:
    expected = _expected(studio, song, case)
    assert expected.startswith(f"{case.field} ") or case.field in expected

    # CLI: one "Error:" line ending in the same message, before a model loads; nothing written
    out = files["root"] / f"out-{case.name.replace(' ', '_').replace('>=', 'ge')}.wav"
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in case.cli]  # type: ignore[union-attr]
    if args[0] != "stems":
        args += ["--model", str(demo_model_dir()), "-o", str(out)]
    before = sorted(p.name for p in files["root"].rglob("*"))
    result = CliRunner().invoke(main, args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.exit_code != 0 and len(errors) == 1, result.stderr
    assert errors[0].endswith(expected), (errors[0], expected)
    assert "loading model" not in result.stderr  # refused at entry
    assert sorted(p.name for p in files["root"].rglob("*")) == before and not out.exists()

    if case.engine is None:
        return
    request = JobRequest(lyrics=LYRICS, style=STYLE, **case.engine)
    edit = request.kind in ("extend", "infill")
    # engine: refused at submit, no job queued
    engine = LocalEngine(studio)
    try:
        with pytest.raises(JobError) as info:
            engine.submit(request, song=song if edit else None, job_id="refused")
        assert str(info.value) == expected
        assert engine.get("refused") is None
    finally:
        engine.close()
    # Serve: the body check behind POST /jobs answers 400 with this message as its "detail"
    payload = {"request": request.to_dict(),
               "song": base64.b64encode(song_to_bytes(song)).decode() if edit else None}
    with pytest.raises(JobError) as info:
        parse_payload(payload)
    assert str(info.value) == expected


class _Client(UdpClient):
    """An OSC client that waits for the answer to one request."""

    def answer(self, address: str) -> tuple[str, list]:
        """The next ``/dr2/ack`` or ``/dr2/error`` for ``address``."""
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            msg = OscMessage(self.sock.recv(65535))
            if msg.address in ("/dr2/ack", "/dr2/error") and msg.params and msg.params[0] == address:
                return msg.address, list(msg.params)
        raise TimeoutError(address)


@pytest.fixture(scope="module")
def bridge(studio: Studio) -> Any:
    style = torch.from_numpy(np.random.default_rng(0).standard_normal(512).astype(np.float32))
    app = BridgeApp(LocalEngine(studio), BridgeOptions(osc_port=0, steps=2), style_embedding=style)
    yield app
    app.close()


@pytest.mark.parametrize("case", [c for c in CASES if c.osc], ids=[c.name for c in CASES if c.osc])
def test_osc_refuses_alike(case: Case, studio: Studio, song: Song, files: dict[str, Path], bridge: Any,
                           tmp_path: Path) -> None:
    expected = _expected(studio, song, case)
    project = tmp_path / "project"
    project.mkdir()
    client = _Client(bridge.osc.udp_port)
    try:
        for address, args in [("/dr2/session/open", (str(project), "generic")),
                              ("/dr2/section/define", ("v1", "verse", 0.0, 8.0)),
                              ("/dr2/lyrics/set", ("v1", "hello world"))]:
            client.send(address, *args)
            assert client.answer(address)[0] == "/dr2/ack"
        before = sorted(p.relative_to(project) for p in project.rglob("*"))
        *setup, (address, args) = case.osc  # type: ignore[misc]
        for step, _ in setup:
            assert step == "<song>"
            bridge.bridge.update_session(lambda session: setattr(session, "song", song))
        args = tuple(str(project) if a == "{project}" else a for a in args)
        client.send(address, *args)
        kind, params = client.answer(address)
        assert kind == "/dr2/error" and params[1] == expected, (params, expected)
        assert not bridge.bridge.running_jobs()
        assert sorted(p.relative_to(project) for p in project.rglob("*")) == before  # no file written
    finally:
        client.sock.close()


def test_the_bridge_refuses_steps_it_cannot_sample_at_start(studio: Studio) -> None:
    """``dr2studio bridge --steps 1`` used to start and then fail every job at render time."""
    from dr2studio.bridge import BridgeError
    from dr2studio.bridge.core import Bridge
    from dr2studio.requests import STEPS

    with pytest.raises(RequestError) as info:
        STEPS.check(1)
    expected = str(info.value)
    result = CliRunner().invoke(main, ["bridge", "--model", str(demo_model_dir()), "--osc-port", "0", "--steps", "1"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1 and errors[0].endswith(expected), result.stderr
    assert result.stdout == ""  # no listening addresses: nothing started
    engine = LocalEngine(studio)
    try:
        with pytest.raises(BridgeError, match=r"steps must be an integer in \[2, 1000\], got 1"):
            Bridge(engine, steps=1)
    finally:
        engine.close()
