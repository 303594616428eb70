"""A real Ray Serve application on a local Ray instance: HTTP streaming, the handle path, bad requests,
and the OSC bridge running against it (ServeEngine)."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = [pytest.mark.ray, pytest.mark.slow]
log = logging.getLogger(__name__)

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from dr2studio.serve import build_app
    from dr2studio.style.embedding import save_style_embedding
    from dr2studio.lab.testing import build_tiny_model

    root = tmp_path_factory.mktemp("serve")
    model = build_tiny_model(root / "model")
    style = save_style_embedding(torch.randn(512, generator=torch.Generator().manual_seed(3)), root / "style.npy")
    port = _free_port()
    # the proxy's body limit (dr2studio.serve_proxy), as `dr2studio serve` installs it, at the test's 12 MiB
    saved = {k: os.environ.get(k) for k in ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "DR2STUDIO_MAX_BODY_BYTES")}
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = "dr2studio.serve_proxy.proxy_middlewares"
    os.environ["DR2STUDIO_MAX_BODY_BYTES"] = str(12 << 20)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # small body and song limits (the defaults are hundreds of MB) so the limit tests stay quick
        handle = serve.run(build_app({"model": str(model), "num_cpus": 0.5, "style_embedding": str(style), "max_pending": 2,
                                      "max_body_bytes": 12 << 20, "max_song_bytes": 8 << 20}),
                           name="dr2studio", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "handle": handle, "root": root, "style": style}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_http_stream_handle_and_errors(served):
    from dr2studio.engine import JobCancelled, JobError, JobRequest, ServeEngine

    engine = ServeEngine(served["url"], concurrency=1)
    try:
        info = engine.health()
        assert info["sample_rate"] == 48000 and info["queue"] == 0
        events = []
        req = JobRequest(kind="generate", lyrics="[verse]\nhello from ray", duration=4.0, steps=2, seed=21)
        song = engine.submit(req, on_event=events.append).wait(180)
        assert song.audio.shape[1] == 4 * 48000 and song.latents.shape[1] == 20
        assert [e.fraction for e in events if e.type == "progress"][-1] == pytest.approx(1.0)
        streamed = np.concatenate([e.audio for e in events if e.type == "audio"], axis=1)
        np.testing.assert_array_equal(streamed, song.audio.numpy())

        longer = engine.submit(JobRequest(kind="extend", lyrics="[chorus]\nla la", seconds=2.0, steps=2, seed=22),
                               song=song).wait(180)
        splice = round(longer.settings["edits"][-1]["splice"] * 48000)
        torch.testing.assert_close(longer.audio[:, :splice], song.audio[:, :splice], rtol=0, atol=0)

        # the handle path inside the cluster gives the same song for the same seed
        by_handle = ServeEngine(served["handle"]).submit(req).wait(180)
        torch.testing.assert_close(by_handle.audio, song.audio, rtol=0, atol=0)

        bad = urllib.request.Request(f"{served['url']}/v1/jobs", data=json.dumps({"request": {"kind": "generate"}}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=60)
        assert info.value.code == 400 and "duration" in info.value.read().decode()
        # a region past the song's end is refused as a job error (at entry, in the words the replica uses too)
        with pytest.raises(JobError, match="past the end of the song"):
            engine.submit(JobRequest(kind="infill", lyrics="[verse]\nx", start=10.0, end=20.0, steps=2), song=song).wait(180)
        # cancelling closes the stream; the replica notices the disconnect and drops the job
        def cancel_on_first_block(e):
            if e.type == "progress" and e.stage == "sample":
                engine.cancel(e.job_id)

        long_job = engine.submit(JobRequest(kind="generate", lyrics="[verse]\nlong", duration=300.0, steps=2),
                                 on_event=cancel_on_first_block)
        with pytest.raises(JobCancelled):
            long_job.wait(180)
        deadline = time.monotonic() + 10  # the full 300 s render would take far longer
        while engine.health()["queue"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.health()["queue"] == 0
    finally:
        engine.close()
    with pytest.raises(JobError, match="cannot reach"):
        ServeEngine("http://127.0.0.1:9").health(timeout=2)


def test_error_codes_pick_the_http_status(served):
    """A refusal's HTTP status comes from its error code, not its wording; the body names the code."""
    import base64
    import importlib.util

    from dr2studio.engine import ErrorCode, JobError, JobRequest, QueueFull, ServeEngine, song_to_bytes
    from dr2studio.requests import RequestError
    from dr2studio.serve import refusal
    from dr2studio.song import Song

    def post(payload) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        req = urllib.request.Request(f"{served['url']}/v1/jobs", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=60)
        return info.value.code, json.loads(info.value.read().decode())

    assert post(b"{not json")[0] == 400
    status, reply = post({"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 5, "steps": 1}})
    assert status == 400 and reply == {"detail": "steps must be an integer in [2, 1000], got 1", "code": "bad_request"}
    song = Song(audio=torch.zeros(1, 2 * 48000), sample_rate=48000, latents=torch.zeros(1, 10, 64))
    status, reply = post({"request": {"kind": "infill", "lyrics": "[verse]\nx", "start": 1.0, "end": 9.0},
                          "song": base64.b64encode(song_to_bytes(song)).decode()})
    assert status == 400 and reply["code"] == "bad_request" and "past the end of the song" in reply["detail"]

    # the handle path streams the same refusal as an error event with its code
    events = list(served["handle"].options(stream=True).events.remote({"request": {"kind": "remix"}}))
    assert events == [{"type": "error", "message": "job kind 'remix' is not one of generate, extend, infill",
                       "code": "bad_request"}]

    # the codes a test cannot cheaply provoke over HTTP (a full replica: test_full_replica_answers_503_busy...)
    assert refusal(QueueFull("3 jobs are already waiting")).status_code == 503
    assert refusal(JobError("project folder is outside the allowed roots", ErrorCode.FORBIDDEN)).status_code == 403
    assert refusal(JobError("outside", ErrorCode.BAD_REQUEST)).status_code == 400  # the code decides, not the words
    assert refusal(RequestError("tempo", "tempo must be ...")).status_code == 400
    assert refusal(JobError("request body too big", ErrorCode.TOO_LARGE)).status_code == 413

    if importlib.util.find_spec("muq") is None:  # a failure while rendering on the replica: code failed
        engine = ServeEngine(served["url"])
        try:
            job = engine.submit(JobRequest(kind="generate", lyrics="[verse]\nhi", duration=2.0, steps=2, style="lofi"))
            with pytest.raises(JobError, match="MuQ-MuLan") as info:
                job.wait(180)
            assert info.value.code is ErrorCode.FAILED and job.error_code == "failed"
        finally:
            engine.close()


def test_bridge_against_serve(served, tmp_path):
    from pythonosc.osc_message import OscMessage
    from pythonosc.osc_message_builder import build_msg

    from dr2studio.bridge import BridgeApp, BridgeOptions
    from dr2studio.engine import ServeEngine

    project = tmp_path / "proj"
    project.mkdir()
    app = BridgeApp(ServeEngine(served["url"]), BridgeOptions(osc_port=0, steps=2))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(180)

    def send(address, *args):
        sock.sendto(build_msg(address, list(args)).dgram, ("127.0.0.1", app.osc.udp_port))

    def job(job_id):
        seen = []
        while True:
            m = OscMessage(sock.recv(65535))
            if m.address.startswith("/dr2/job/") and m.params[0] == job_id:
                seen.append((m.address, list(m.params)))
                if m.address in ("/dr2/job/done", "/dr2/job/error"):
                    return seen

    try:
        send("/dr2/subscribe")
        send("/dr2/session/open", str(project), "generic")
        send("/dr2/section/define", "v1", "verse", 0.0, 8.0)
        send("/dr2/lyrics/set", "v1", "served from afar")
        send("/dr2/gen/song", "s1", 0.0, 5)
        events = job("s1")
        assert events[-1] == ("/dr2/job/done", ["s1", 1]), events
        assert any(a == "/dr2/job/progress" for a, _ in events)
        stem = next(p for a, p in events if a == "/dr2/job/stem")
        assert sf.info(stem[2]).duration == pytest.approx(4.0)
        send("/dr2/gen/continue", "c1", 8.0, 4.0, "v1")
        events = job("c1")
        assert events[-1][0] == "/dr2/job/done", events
        manifest = json.loads((project / "dr2studio.json").read_text())
        assert [t["kind"] for t in manifest["takes"]] == ["generate", "extend"]
    finally:
        sock.close()
        app.close()


# ------------------------------------------------------------------------- issue 18: Serve on a network

def _post(served, payload, timeout: float = 60) -> tuple[int, dict]:
    """POST /v1/jobs and read the whole reply: (status, refusal body) or (200, the last stream event)."""
    body = payload if isinstance(payload, (bytes, bytearray)) else json.dumps(payload).encode()
    req = urllib.request.Request(f"{served['url']}/v1/jobs", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            lines = [json.loads(line) for line in resp if line.strip()]
            return resp.status, lines[-1]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode())


def _health(served, timeout: float = 1.0) -> tuple[dict, float]:
    start = time.monotonic()
    with urllib.request.urlopen(f"{served['url']}/v1/health", timeout=timeout) as resp:
        return json.loads(resp.read()), time.monotonic() - start


def _song_of(event: dict):
    import base64

    from dr2studio.engine import song_from_bytes

    assert event["type"] == "result", event
    return song_from_bytes(base64.b64decode(event["song"]))


def test_lyrics_and_style_are_data_not_server_files(served):
    """Issue 18: a ``lyrics`` naming a server .lrc is sung as text (its content never comes back), a
    ``style`` naming a server .npy or audio file is a text prompt (never loaded), and an existing and a
    missing file get the same answer: no oracle for what exists on the server."""
    import importlib.util

    secret = served["root"] / "secret.lrc"
    secret.write_text("[verse]\nmarmalade zeppelin\n", encoding="utf-8")
    (served["root"] / "notes.txt").write_text("[chorus]\nquartz jukebox\n", encoding="utf-8")
    answers = {}
    for name in ("secret.lrc", "notes.txt", "missing.lrc"):
        status, event = _post(served, {"request": {"kind": "generate", "lyrics": str(served["root"] / name),
                                                   "duration": 1.0, "steps": 2, "seed": 3}})
        assert status == 200, event
        song = _song_of(event)
        assert "marmalade" not in song.lyrics and "quartz" not in song.lyrics
        answers[name] = song.lyrics.replace(name, "<file>")
    assert answers["secret.lrc"] == answers["missing.lrc"]
    if importlib.util.find_spec("muq") is None:  # a text prompt needs the (absent) text encoder: the same error for all
        replies = []
        for path in (served["style"], served["root"] / "nothing.npy", served["root"] / "model" / "ref.wav"):
            status, event = _post(served, {"request": {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 1.0,
                                                       "steps": 2, "style": str(path)}})
            assert status == 200 and event["type"] == "error", event
            replies.append(event["message"].replace(str(path), "<style>"))
        assert "not found" not in replies[0] and len(set(replies)) == 1, replies


def _bomb(path, inflated: int) -> bytes:
    """A deflated song.wav of ``inflated`` zero bytes, written in chunks (never held inflated here)."""
    import zipfile

    info = zipfile.ZipInfo("song.wav")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(info, "w") as out:
            for _ in range(inflated >> 20):
                out.write(bytes(1 << 20))
    return path.read_bytes()


def test_song_archive_bomb_is_refused_without_inflating(served, tmp_path):
    """Issue 18: a ~500 KiB song archive that inflates to 500 MiB is refused 413 at once (its declared
    size), a lying or overfull archive too, an unreadable one is 400; the replica serves on."""
    import base64
    import io
    import zipfile

    blob = _bomb(tmp_path / "bomb.zip", 500 << 20)
    assert len(blob) < 600 * 1024
    start = time.monotonic()
    status, reply = _post(served, {"request": {"kind": "extend", "lyrics": "[verse]\nx", "seconds": 2.0, "steps": 2},
                                   "song": base64.b64encode(blob).decode()})
    assert (status, reply["code"]) == (413, "too_large") and "inflate" in reply["detail"], reply
    assert time.monotonic() - start < 10
    log.info("a %d KiB archive of 500 MiB refused 413 in %.3f s", len(blob) >> 10, time.monotonic() - start)
    # inflates past the (test) 8 MiB cap while its declared size is within 12 MiB of body: stopped while streaming
    status, reply = _post(served, {"request": {"kind": "extend", "lyrics": "[verse]\nx", "seconds": 2.0, "steps": 2},
                                   "song": base64.b64encode(_bomb(tmp_path / "b2.zip", 9 << 20)).decode()})
    assert (status, reply["code"]) == (413, "too_large"), reply
    garbage = io.BytesIO()
    with zipfile.ZipFile(garbage, "w") as zf:
        zf.writestr("song.wav", b"RIFF but no wave")
    status, reply = _post(served, {"request": {"kind": "extend", "lyrics": "[verse]\nx", "seconds": 2.0, "steps": 2},
                                   "song": base64.b64encode(garbage.getvalue()).decode()})
    assert (status, reply["code"]) == (400, "bad_request") and "song" in reply["detail"], reply
    assert _health(served)[0]["queue"] == 0


def _raw_post(served, headers: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served["port"]), timeout=30)
    sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n".encode())
    return sock


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split()[1]), rest


def test_body_limit_refuses_before_buffering(served):
    """Issue 18: a body declared larger than the limit is refused 413 on its Content-Length before a byte of
    it is sent; a chunked body without a length is refused once it passes the limit, not after buffering it all."""
    import select

    start = time.monotonic()
    sock = _raw_post(served, f"Content-Length: {600 * 1024 * 1024}\r\n")
    try:
        status, rest = _read_status(sock)
    finally:
        sock.close()
    assert status == 413 and b"too_large" in rest and time.monotonic() - start < 10
    log.info("600 MiB declared body refused 413 in %.3f s", time.monotonic() - start)

    # a chunked body (no length to check) is refused 411 at the proxy before it is read
    sock = _raw_post(served, "Transfer-Encoding: chunked\r\n")
    sent, status = 0, None
    chunk = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"
    try:
        while sent < 64 << 20:  # the limit is 12 MiB: the server must answer long before 64 MiB
            if select.select([sock], [], [], 0)[0]:
                status, _ = _read_status(sock)
                break
            try:
                sock.sendall(chunk)
            except OSError:
                status, _ = _read_status(sock)
                break
            sent += 1 << 20
    finally:
        sock.close()
    assert status == 411 and sent < 32 << 20, (status, sent)
    assert _health(served)[0]["queue"] == 0


def test_replica_counts_body_bytes_while_they_stream():
    """Behind a proxy without the middleware, the replica still stops reading a body at its limit (it
    never joins more than ``limit`` bytes) and refuses a declared length over it before reading."""
    import asyncio

    from starlette.requests import Request

    from dr2studio.engine import ErrorCode, JobError
    from dr2studio.serve import read_body

    def request(headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[Request, list[int]]:
        served_chunks = [0]

        async def receive():
            served_chunks[0] += 1
            more = served_chunks[0] < chunks
            return {"type": "http.request", "body": b"x" * 1000, "more_body": more}

        return Request({"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers}, receive), served_chunks

    req, count = request([], chunks=1000)
    with pytest.raises(JobError) as info:
        asyncio.run(read_body(req, 10_000))
    assert info.value.code is ErrorCode.TOO_LARGE and count[0] == 11  # stopped at the chunk that passed the limit
    req, count = request([(b"content-length", b"1000000")], chunks=1000)
    with pytest.raises(JobError) as info:
        asyncio.run(read_body(req, 10_000))
    assert info.value.code is ErrorCode.TOO_LARGE and count[0] == 0
    req, _ = request([(b"content-length", b"3000")], chunks=3)
    assert len(asyncio.run(read_body(req, 10_000))) == 3000


def test_wrong_json_types_are_400_naming_the_field(served):
    """Issue 18: wrong JSON types are 400 bad_request naming the field (never 500); oversized lyrics are
    refused at entry (requests.MAX_LYRICS_CHARS); hostile JSON (deep nesting) is a 400 too."""
    from dr2studio.requests import MAX_LYRICS_CHARS

    ok = {"kind": "generate", "lyrics": "[verse]\nhi", "duration": 2}
    cases = [({**ok, "duration": "5"}, "duration"), ({**ok, "lyrics": 5}, "lyrics"), ({**ok, "steps": [2]}, "steps"),
             ({**ok, "style": {"a": 1}}, "style"), ({**ok, "style_embedding": "x"}, "style_embedding"),
             ({**ok, "seed": 1.5}, "seed"), ({**ok, "stereo": "yes"}, "stereo"), ({**ok, "kind": 5}, "kind"),
             ({**ok, "tempo": None, "cfg_strength": "high"}, "cfg_strength"),
             ({**ok, "lyrics": "[verse]\n" + "la " * MAX_LYRICS_CHARS}, "lyrics")]
    for request, field in cases:
        status, reply = _post(served, {"request": request})
        assert (status, reply["code"]) == (400, "bad_request") and field in reply["detail"], (request, reply)
    for body in (b"[]", b'{"request": 5}', b'{"request": {}, "song": 5}', b"[" * 200000 + b"]" * 200000):
        status, reply = _post(served, body)
        assert (status, reply["code"]) == (400, "bad_request"), (body[:20], reply)
    assert _health(served)[0]["queue"] == 0


def test_full_replica_answers_503_busy_and_health_stays_prompt(served):
    """Issue 18: with its one rendering job and its queue full (max_pending=2), the next job gets 503
    ``busy`` at once (over HTTP and over the handle), and /v1/health answers within 1 s throughout."""
    import http.client

    from dr2studio.engine import ErrorCode, JobError, JobRequest, ServeEngine

    conns = []
    try:
        for i in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=60)
            conn.request("POST", "/v1/jobs", body=json.dumps({"request": {
                "kind": "generate", "lyrics": f"[verse]\nbusy {i}", "duration": 300.0, "steps": 2}}),
                headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.readline())["type"] == "accepted"
            conns.append((conn, resp))
        start = time.monotonic()
        status, reply = _post(served, {"request": {"kind": "generate", "lyrics": "[verse]\none more", "duration": 2}})
        assert (status, reply["code"]) == (503, "busy") and time.monotonic() - start < 2.0, reply
        log.info("full replica: 503 busy in %.3f s", time.monotonic() - start)
        events = list(served["handle"].options(stream=True).events.remote(
            {"request": {"kind": "generate", "lyrics": "[verse]\nby handle", "duration": 2}}))
        assert events[-1]["type"] == "error" and events[-1]["code"] == "busy", events
        engine = ServeEngine(served["url"])
        try:
            with pytest.raises(JobError) as info:
                engine.submit(JobRequest(kind="generate", lyrics="[verse]\nx", duration=2.0, steps=2)).wait(30)
            assert info.value.code is ErrorCode.BUSY
        finally:
            engine.close()
        worst = 0.0
        for _ in range(10):
            info_, took = _health(served)
            worst = max(worst, took)
            assert info_["queue"] == 3 and info_["capacity"] == 3
            time.sleep(0.2)
        assert worst < 1.0, worst
        log.info("health while 3 jobs are held: worst of 10 answers %.3f s", worst)
    finally:
        for conn, resp in conns:
            conn.close()
    deadline = time.monotonic() + 20  # the closed streams cancel their jobs
    while _health(served)[0]["queue"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(served)[0]["queue"] == 0
    status, event = _post(served, {"request": {"kind": "generate", "lyrics": "[verse]\nback", "duration": 1.0, "steps": 2}})
    assert status == 200 and event["type"] == "result"


def test_hostile_lyrics_neither_freeze_the_replica_nor_pass_the_entry_limit(served):
    """Issue 18: a 60 KB lyric tag (the pattern that once backtracked for 38 s) leaves /v1/health answering
    within 1 s while the replica handles it; 10 MB of lyrics are refused at entry (requests.MAX_LYRICS_CHARS)."""
    import threading

    from dr2studio.requests import MAX_LYRICS_CHARS

    tag = "[a" + "_" * 60000 + "!]"
    assert len(tag) < MAX_LYRICS_CHARS
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(reply=_post(served, {"request": {
        "kind": "generate", "lyrics": f"[verse]\nhello\n{tag}\nworld", "duration": 1.0, "steps": 2}}, timeout=120)))
    start = time.monotonic()
    worker.start()
    worst = 0.0
    while worker.is_alive() and time.monotonic() - start < 60:
        worst = max(worst, _health(served, timeout=5)[1])
        time.sleep(0.1)
    worker.join(60)
    assert not worker.is_alive() and worst < 1.0, worst
    log.info("60 KB lyric tag: job answered in %.2f s, health worst %.3f s", time.monotonic() - start, worst)
    assert time.monotonic() - start < 30
    status, _ = result["reply"]
    assert status in (200, 400)

    start = time.monotonic()
    status, reply = _post(served, {"request": {"kind": "generate", "lyrics": "la " * ((10 << 20) // 3), "duration": 2}})
    assert (status, reply["code"]) == (400, "bad_request") and "lyrics" in reply["detail"], reply
    assert time.monotonic() - start < 10
