"""`ray job submit` against a `ray start --head` cluster runs a training stage end to end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head_cluster(tmp_path):
    """A private head node (own ports, own temp dir), stopped by signalling its `--block` process."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", RAY_worker_niceness="0",
               RAY_AUTH_MODE="token")  # the default for new clusters; the client must say so too
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"rayjob-{os.getpid()}"  # short: unix socket paths are length-limited
    proc = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}",
         f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # answering (401 with token auth on): it is up
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ray head did not start: {(tmp_path / 'head.log').read_text()[-2000:]}")
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` tears its cluster down on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_the_vae_stage(head_cluster, tmp_path):
    address, env = head_cluster
    work = tmp_path / "job"  # the working dir a user would pass (here: just the training package)
    shutil.copytree(REPO / "training", work / "training", ignore=shutil.ignore_patterns("__pycache__", "configs", "recipes"))
    runs = tmp_path / "runs"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", str(work),
           "--", "python", "training/vae.py", "--smoke", "--storage-path", str(runs), "--name", "job",
           "--max-steps", "6", "--set", "checkpoint_every=3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    steps = [json.loads(line)["step"] for line in (runs / "job" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (runs / "job" / "checkpoint_00000006" / "meta.json").is_file()
    assert (runs / "job" / "export" / "encoder.safetensors").is_file()
    assert (runs / "job" / "export" / "decoder.safetensors").is_file()
