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
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(bin_dir: Path, env: dict[str, str], temp: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``ray start --head --block`` on fresh ports; returns once the node reports it is up."""
    dash = _free_port()
    ports = ("port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")
    proc = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--dashboard-port={dash}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
         # every default port is replaced: other Ray clusters on this machine may hold them
         *(f"--{name}={_free_port()}" for name in ports)],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.time() + 150
    while proc.poll() is None and time.time() < deadline:
        if "block forever" in log.read_text(errors="replace"):  # printed after the node registered
            return proc, f"http://127.0.0.1:{dash}"
        time.sleep(1)
    _stop(proc)
    return proc, ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` tears its cluster down on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture()
def head_cluster(tmp_path):
    """A private head node (own ports, own temp dir), stopped by signalling its `--block` process.

    Ray gives a starting node 30 s to register; on a busy machine that can fail, so it tries again."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", RAY_worker_niceness="0",
               RAY_AUTH_MODE="token")  # the default for new clusters; the client must say so too
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"rayjob-{os.getpid()}"  # short: unix socket paths are length-limited
    log = tmp_path / "head.log"
    proc = None
    try:
        for _ in range(3):
            proc, address = _start_head(bin_dir, env, temp, log)
            if address:
                break
        else:
            pytest.fail(f"ray head did not start: {log.read_text(errors='replace')[-2000:]}")
        yield address, env
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_the_vae_stage(head_cluster, tmp_path):
    address, env = head_cluster
    work = tmp_path / "job"  # the working dir a user would pass (here: just the training package)
    shutil.copytree(REPO / "training", work / "training", ignore=shutil.ignore_patterns("__pycache__", "configs", "recipes"))
    runs = tmp_path / "runs"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", str(work),
           "--", "python", "training/vae.py", "--smoke", "--storage-path", str(runs), "--name", "job",
           "--max-steps", "6", "--set", "checkpoint_every=3"]
    deadline = time.time() + 120
    while True:  # the dashboard answers before the node's job agent is up; submitting then is refused
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stderr + done.stdout or time.time() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    steps = [json.loads(line)["step"] for line in (runs / "job" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (runs / "job" / "checkpoint_00000006" / "meta.json").is_file()
    assert (runs / "job" / "export" / "encoder.safetensors").is_file()
    assert (runs / "job" / "export" / "decoder.safetensors").is_file()
