"""A real Ray Serve application on a local Ray instance: HTTP streaming, the handle path, bad requests,
and the OSC bridge running against it (ServeEngine)."""
from __future__ import annotations

import json
import socket
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = [pytest.mark.ray, pytest.mark.slow]

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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = serve.run(build_app({"model": str(model), "num_cpus": 0.5, "style_embedding": str(style), "max_pending": 2}),
                           name="dr2studio", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "handle": handle}
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

    # the codes a test cannot cheaply provoke over HTTP (a full queue waits in Serve's own admission first)
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
