"""The take browser's server over real HTTP: the project, the takes' files and drawings, ratings, actions.

A project of three takes sampled by the shipped demo model is made once for the module (2 s each) and
served by a real uvicorn server on a free loopback port. Hostile requests (paths out of the project,
links, unknown takes, malformed actions and ratings, other sites) must get 4xx answers, write nothing,
and leave the server serving; actions run on the real engine and write real takes.
"""
from __future__ import annotations

import base64
import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ui_helpers import demo_project

requests = pytest.importorskip("requests")
pytest.importorskip("uvicorn", reason="the take browser needs the ui extra (starlette, uvicorn)")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studio():
    from dr2studio.studio import Studio

    return Studio.load()


@pytest.fixture(scope="module")
def project(tmp_path_factory, studio) -> Path:
    folder = tmp_path_factory.mktemp("ui") / "Song"
    demo_project(folder, studio, takes=3, seconds=2.0, steps=2)
    return folder


@pytest.fixture(scope="module")
def server(project, studio):
    from dr2studio.engine import LocalEngine
    from dr2studio.ui import UiServer

    engine = LocalEngine(studio)
    srv = UiServer(project, engine=engine, port=0, steps=2)
    yield srv
    srv.close()
    engine.close()


def _get(server, path: str, **kw):
    return requests.get(server.url + path.lstrip("/"), timeout=30, **kw)


def _post(server, path: str, body, **kw):
    return requests.post(server.url + path.lstrip("/"), json=body, timeout=30, **kw)


def _raw(server, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """A GET with the path sent exactly as given (no client-side normalisation of ``..``)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _events(server, job_id: str, timeout: float = 120.0) -> list[dict]:
    out = []
    with requests.get(f"{server.url}api/jobs/{job_id}/events", stream=True, timeout=timeout) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append({"event": kind, **json.loads(line[6:])})
    return out


def _manifest(project: Path) -> dict:
    return json.loads((project / "dr2studio.json").read_text())


# -- reading ---------------------------------------------------------------------------------------------
def test_page_and_project(server, project):
    page = _get(server, "/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert _get(server, "/static/app.js").status_code == 200
    info = _get(server, "/api/project").json()
    assert [t["take"] for t in info["takes"]] == ["take1", "take2", "take3"]
    assert all(t["stems"] == ["mix"] and abs(t["duration_seconds"] - 2.0) < 1e-6 for t in info["takes"])
    assert info["dimensions"] == ["overall", "musicality", "lyric_accuracy", "style_similarity", "audio_quality"]
    assert info["actions"] is True and info["block_seconds"] == pytest.approx(0.5)  # demo: 20 frames at 40 Hz
    assert info["takes"][0]["seed"] == 11 and info["takes"][0]["first_line"] == "Neon city calling me tonight"


def test_take_ruler_sections_and_settings(server):
    detail = _get(server, "/api/takes/take1").json()
    tl = detail["timeline"]
    assert tl["bpm"] == 120.0 and tl["timesig"] == [4, 4]
    assert [b["time"] for b in tl["bars"]] == [0.0, 2.0]  # 120 bpm, 4/4: a bar every 2 s
    assert tl["blocks"] == [0.0, 0.5, 1.0, 1.5]
    assert [s["label"] for s in tl["sections"]] == ["intro 1", "verse 1", "chorus 1", "outro 1"]
    assert tl["sections"][0]["start"] == 0.0 and tl["sections"][-1]["end"] == pytest.approx(2.0)
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in zip(tl["sections"], tl["sections"][1:]))
    assert tl["sections"][1]["lines"] == ["Neon city calling me tonight", "Every step I take feels right"]
    assert tl["section_timing"] == "estimated" and tl["edits"] == []
    assert detail["take"]["settings"]["steps"] == 2 and detail["take"]["seed"] == 11


def test_waveform_and_audio_are_the_files(server, project):
    entry = [t for t in _manifest(project)["takes"] if t["take"] == "take2"][0]
    path = project / entry["files"]["mix"]
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = _get(server, "/api/takes/take2/waveform/mix?points=100").json()
    assert wave["points"] == 100 and len(wave["min"]) == len(wave["max"]) == 100
    assert wave["duration"] == pytest.approx(audio.shape[0] / rate)
    mono = audio.mean(axis=1)
    assert max(wave["max"]) == pytest.approx(float(mono.max()), abs=1e-3)
    assert min(wave["min"]) == pytest.approx(float(mono.min()), abs=1e-3)
    whole = _get(server, "/api/takes/take2/audio/mix")
    assert whole.status_code == 200 and whole.content == path.read_bytes()
    part = _get(server, "/api/takes/take2/audio/mix", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == path.read_bytes()[100:200]


def test_spectrogram_finds_a_tone(tmp_path):
    """A 1 kHz tone, written as a real take: the loudest row of the spectrogram is the band holding 1 kHz."""
    import torch

    from dr2studio.audio.daw import project_layout, write_take
    from dr2studio.ui import UiServer

    rate = 48000
    t = torch.arange(rate * 2) / rate
    write_take(project_layout(tmp_path, "generic"), "tone", {"mix": ((0.5 * torch.sin(2 * np.pi * 1000 * t))[None], rate)},
               {"origin": "api"})
    with UiServer(tmp_path, port=0) as srv:
        spec = _get(srv, "/api/takes/tone/spectrogram/mix?frames=50&bins=64").json()
        assert _post(srv, "/api/takes/tone/actions", {"action": "new_seed"}).status_code == 503  # no model: read-only
    cells = np.frombuffer(base64.b64decode(spec["data"]), np.uint8).reshape(spec["frames"], spec["bins"])
    edges = np.geomspace(spec["fmin"], spec["fmax"], spec["bins"] + 1)
    loudest = int(np.argmax(cells.mean(axis=0)))
    assert edges[loudest] <= 1000 < edges[loudest + 1]
    assert cells.max() == 255 and cells[:, -1].mean() < 100  # nothing near Nyquist


def test_newest_scores_beside_ratings(server, project):
    lines = [
        {"take": "take1", "time": "2026-12-01T10:00:00+00:00", "scores": {"musicality": 0.2}, "details": {}},
        "this line is not JSON",
        {"take": "take1", "time": "2026-12-02T10:00:00+00:00", "scores": {"musicality": 0.7, "audio_quality": None},
         "details": {"tempo": {"bpm": 120}}},
        {"take": "take3", "time": "2026-12-01T10:00:00+00:00", "scores": {"lyric_accuracy": 0.4}},
    ]
    (project / "dr2studio.scores.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    try:
        detail = _get(server, "/api/takes/take1").json()
        assert detail["scores"]["scores"] == {"musicality": 0.7, "lyric_accuracy": None, "style_similarity": None,
                                              "audio_quality": None}  # unmeasured dimensions shown as "—"
        assert detail["scores"]["details"] == {"tempo": {"bpm": 120}}
        assert set(_get(server, "/api/project").json()["scores"]) == {"take1", "take3"}
    finally:
        (project / "dr2studio.scores.jsonl").unlink()
    assert _get(server, "/api/takes/take1").json()["scores"] is None  # absent file: no scores


# -- hostile requests ---------------------------------------------------------------------------------------
def test_files_outside_the_project_are_refused(server, project, tmp_path):
    outside = tmp_path / "secret.wav"
    sf.write(outside, np.zeros((800, 1), np.float32), 8000)
    (project / "link.wav").symlink_to(outside)
    (project / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    try:
        inside = _manifest(project)["takes"][0]["files"]["mix"]
        assert _raw(server, f"/files/{inside}")[0] == 200
        for path in ("/files/../dr2studio.json", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/..%2F..%2Fetc%2Fpasswd",
                     f"/files/{outside}", "/files//etc/passwd", "/files/link.wav", "/files/linkdir/secret.wav",
                     "/files/dr2studio.json", "/files/songs/take1.dr2.safetensors", "/api/takes/..%2Fsecret/audio/mix",
                     "/api/takes/take1/audio/..%2F..%2Fetc%2Fpasswd", "/static/../dr2studio.json",
                     "/static/%2e%2e/app.py"):
            status, body = _raw(server, path)
            assert 400 <= status < 500, f"{path} answered {status}"
            assert b"root:" not in body and b"dr2studio-manifest" not in body and b"RIFF" not in body[:4]
        assert _raw(server, "/files/songs/nothing.wav")[0] == 404
    finally:
        (project / "link.wav").unlink()
        (project / "linkdir").unlink()
    assert _get(server, "/api/project").status_code == 200  # still serving


def test_a_manifest_naming_files_outside_is_not_followed(tmp_path):
    """A project from someone else: its manifest names a file outside the project; the page refuses it."""
    import torch

    from dr2studio.audio.daw import project_layout, write_take
    from dr2studio.ui import UiServer

    folder = tmp_path / "shared project"
    write_take(project_layout(folder, "generic"), "ok", {"mix": (torch.zeros(1, 8000), 8000)}, {"origin": "api"})
    sf.write(tmp_path / "outside.wav", np.ones((800, 1), np.float32) * 0.5, 8000)
    manifest = _manifest(folder)
    manifest["takes"].append({**manifest["takes"][0], "take": "evil", "files": {"mix": "../outside.wav"}})
    (folder / "dr2studio.json").write_text(json.dumps(manifest))
    with UiServer(folder, port=0) as srv:
        for path in ("/api/takes/evil/audio/mix", "/api/takes/evil/waveform/mix", "/api/takes/evil/spectrogram/mix"):
            assert _get(srv, path).status_code == 403, path
        assert _get(srv, "/api/takes/ok/audio/mix").status_code == 200


def test_unknown_takes_stems_and_jobs(server):
    assert _get(server, "/api/takes/nope").status_code == 404
    assert _get(server, "/api/takes/nope/audio/mix").status_code == 404
    assert _get(server, "/api/takes/take1/audio/vocals").status_code == 404
    assert _get(server, "/api/takes/take1/waveform/mix?points=x").status_code == 400
    assert _get(server, "/api/jobs/nope").status_code == 404
    assert _get(server, "/api/jobs/nope/events").status_code == 404
    assert _get(server, "/api/nothing").status_code == 404
    assert requests.delete(server.url + "api/takes/take1", timeout=10).status_code == 405
    assert _get(server, "/api/project").status_code == 200


def test_other_sites_are_refused(server, project):
    # DNS rebinding: a page of another site that resolves to 127.0.0.1 sends its own Host
    assert _raw(server, "/api/project", {"Host": "evil.example:80"})[0] == 400
    before = (project / "dr2studio.ratings.jsonl").read_bytes() if (project / "dr2studio.ratings.jsonl").exists() else b""
    r = _post(server, "/api/takes/take1/ratings", {"stars": 5}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    form = requests.post(server.url + "api/takes/take1/ratings", data={"stars": "5"}, timeout=10)  # a cross-site form
    assert form.status_code == 415
    after = (project / "dr2studio.ratings.jsonl").read_bytes() if (project / "dr2studio.ratings.jsonl").exists() else b""
    assert after == before


def test_ratings(server, project):
    from dr2studio.ratings import RatingStore

    store = RatingStore(project)
    before = len(store.history())
    for body, status in (({"stars": 0}, 400), ({"stars": 6}, 400), ({"stars": "4"}, 400), ({"stars": True}, 400),
                         ({"stars": 3, "dimension": "loudness"}, 400), ({"stars": 3, "take": "x"}, 400), ([3], 400),
                         ({}, 400)):
        assert _post(server, "/api/takes/take2/ratings", body).status_code == status, body
    assert _post(server, "/api/takes/nope/ratings", {"stars": 3}).status_code == 404
    bad_json = requests.post(server.url + "api/takes/take2/ratings", data=b"{stars", timeout=10,
                             headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    huge = requests.post(server.url + "api/takes/take2/ratings", data=b"{" + b" " * 300_000 + b"}", timeout=10,
                         headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    assert len(store.history()) == before  # nothing written by any of them
    r = _post(server, "/api/takes/take2/ratings", {"stars": 2, "dimension": "audio_quality"})
    assert r.status_code == 201 and r.json()["rating"]["source"] == "web"
    r = _post(server, "/api/takes/take2/ratings", {"stars": 5})
    assert r.status_code == 201
    last = store.history("take2")[-2:]
    assert [(x.stars, x.dimension, x.source) for x in last] == [(2, "audio_quality", "web"), (5, "overall", "web")]
    shown = _get(server, "/api/takes/take2").json()["ratings"]
    assert shown == store.current("take2") and shown["audio_quality"] == 2.0 and shown["musicality"] == 5.0


def test_malformed_actions_are_refused(server, project):
    before = _manifest(project)["takes"]
    cases = [
        ("take1", [1, 2], 400), ("take1", "extend", 400), ("take1", {}, 400), ("take1", {"action": "delete"}, 400),
        ("take1", {"action": "extend", "path": "/etc/passwd"}, 400),
        ("take1", {"action": "extend", "seconds": -1}, 400), ("take1", {"action": "extend", "seconds": "ten"}, 400),
        ("take1", {"action": "extend", "seconds": 1e9}, 400), ("take1", {"action": "extend", "steps": 1}, 400),
        ("take1", {"action": "extend", "lyrics": 5}, 400), ("take1", {"action": "extend", "style": ["x"]}, 400),
        ("take1", {"action": "regenerate"}, 400), ("take1", {"action": "regenerate", "section": 99}, 400),
        ("take1", {"action": "regenerate", "section": "1"}, 400),
        ("take1", {"action": "regenerate", "start": 1.5, "end": 1.0, "lyrics": "la"}, 400),
        ("take1", {"action": "regenerate", "start": 0.5, "end": 9.0, "lyrics": "la"}, 400),  # past the song's end
        ("take1", {"action": "new_seed", "seed": -3}, 400), ("take1", {"action": "new_seed", "cfg_strength": 1e6}, 400),
        ("nope", {"action": "new_seed"}, 404), ("..", {"action": "new_seed"}, 404),
    ]
    for take, body, status in cases:
        r = _post(server, f"/api/takes/{take}/actions", body)
        assert r.status_code == status, (take, body, r.status_code, r.text)
        assert r.json()["error"]
    assert _manifest(project)["takes"] == before
    assert _get(server, "/api/jobs").json()["jobs"] == []  # nothing was queued
    assert _get(server, "/api/project").status_code == 200


# -- actions -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_extend_streams_progress_and_audio_then_writes_the_take(server, project):
    from dr2studio.song import Song

    r = _post(server, "/api/takes/take1/actions", {"action": "extend", "seconds": 1.0, "seed": 3})
    assert r.status_code == 202
    job = r.json()["job"]
    events = _events(server, job["id"])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "job" and "progress" in kinds and "audio" in kinds and kinds[-1] == "done"
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1
    audio_events = [e for e in events if e["event"] == "audio"]
    assert audio_events[0]["start"] == pytest.approx(1.75, abs=0.3)  # the splice, before the old end (crossfade)
    assert audio_events[-1]["streamed"] == pytest.approx(3.0, abs=0.05)
    done = _get(server, f"/api/jobs/{job['id']}").json()["job"]
    assert done["state"] == "done" and done["new_take"] == events[-1]["take"]
    streamed = requests.get(f"{server.url}api/jobs/{job['id']}/audio.wav", timeout=10)
    data, rate = sf.read(__import__("io").BytesIO(streamed.content), dtype="float32")
    assert streamed.status_code == 200 and len(data) / rate == pytest.approx(3.0, abs=0.01)

    entry = [t for t in _manifest(project)["takes"] if t["take"] == done["new_take"]][0]
    assert (entry["parent_take"], entry["action"], entry["kind"], entry["door"]) == ("take1", "extend", "extend", "ui")
    assert entry["duration_seconds"] == pytest.approx(3.0, abs=0.01) and entry["seed"] == 3
    edit = entry["settings"]["edits"][-1]
    assert edit["kind"] == "extend" and edit["seed"] == 3
    new_song = Song.load(entry["source"])  # kept inside the project, with its sidecar: the next action continues it
    assert Path(entry["source"]).parent == (project / ".dr2studio" / "ui" / "songs").resolve() and new_song.has_latents
    old_song = Song.load(project / "songs" / "take1.wav")
    keep = int(round(edit["splice"] * old_song.sample_rate))
    assert torch_equal(new_song.audio[:, :keep], old_song.audio[:, :keep])  # every sample before the splice kept
    detail = _get(server, f"/api/takes/{entry['take']}").json()
    assert detail["timeline"]["edits"][-1]["splice"] == edit["splice"]
    spans = detail["timeline"]["sections"]
    assert spans[-1]["start"] >= edit["splice"] - 1e-6 and spans[-1]["label"] == "chorus 2"  # the extension's own lyrics


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.slow
def test_new_seed_samples_the_take_again(server, project):
    r = _post(server, "/api/takes/take2/actions", {"action": "new_seed", "seed": 5})
    job = r.json()["job"]
    events = _events(server, job["id"])
    assert events[-1]["event"] == "done", events[-3:]
    streamed = [e for e in events if e["event"] == "audio"]
    assert streamed and streamed[0]["start"] == 0.0 and streamed[-1]["streamed"] == pytest.approx(2.0, abs=0.01)
    entry = [t for t in _manifest(project)["takes"] if t["take"] == events[-1]["take"]][0]
    parent = [t for t in _manifest(project)["takes"] if t["take"] == "take2"][0]
    assert (entry["kind"], entry["seed"], entry["parent_take"]) == ("generate", 5, "take2")
    assert entry["lyrics"] == parent["lyrics"] and entry["duration_seconds"] == pytest.approx(2.0)
    a, _ = sf.read(project / entry["files"]["mix"])
    b, _ = sf.read(project / parent["files"]["mix"])
    assert not np.array_equal(a, b)  # another seed: another take
    cancel = _post(server, f"/api/jobs/{job['id']}/cancel", {})
    assert cancel.status_code == 409  # a finished job cannot be cancelled


# -- doors ---------------------------------------------------------------------------------------------------
def _start(args: list[str], timeout: float = 120.0) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "dr2studio.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline and not line.startswith("{"):
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr.read()}")
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_serves_a_project_on_loopback(project):
    proc, info = _start(["ui", str(project), "--port", "0", "--no-model"])
    try:
        assert info["url"].startswith("http://127.0.0.1:") and info["engine"] is None
        listing = requests.get(info["url"] + "api/project", timeout=10).json()
        assert [t["take"] for t in listing["takes"]][:3] == ["take1", "take2", "take3"] and listing["actions"] is False
    finally:
        assert _stop(proc) == 0
    bad = subprocess.run([sys.executable, "-m", "dr2studio.cli", "ui", str(project / "missing")], capture_output=True,
                         text=True, cwd=REPO)
    assert bad.returncode != 0 and "missing" in bad.stderr


@pytest.mark.slow
def test_bridge_serves_the_page_beside_osc(project):
    pytest.importorskip("pythonosc", reason="the bridge needs the bridge extra")
    proc, info = _start(["bridge", "--model", str(REPO / "dr2studio" / "assets" / "demo"), "--project", str(project),
                         "--osc-port", "0", "--ui-port", "0", "--steps", "2"])
    try:
        assert info["osc_udp"] > 0 and info["ui"].startswith("http://127.0.0.1:")
        listing = requests.get(info["ui"] + "api/project", timeout=10).json()
        assert listing["root"] == str(project.resolve()) and listing["actions"] is True
        assert listing["engine"].startswith("local:")
    finally:
        assert _stop(proc) == 0
