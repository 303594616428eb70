"""The Ray commands of docs/training.md, for real: `ray start --head` and `ray job submit` a stage.

As a user without the venv activated: PATH has no `python` with torch, HOME is fresh (so the auth token
is this test's), `RAY_AUTH_MODE=token` with a token from `ray get-auth-token --generate`.
"""
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
    """``ray start --head`` (+ ``--block``, so the test can stop exactly this cluster: ``ray stop`` would stop
    every Ray on the machine) on fresh ports; returns once the node reports it is up."""
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
    """A private head node (own ports, own temp dir, own HOME), stopped by signalling its `--block` process.

    Ray gives a starting node 30 s to register; on a busy machine that can fail, so it tries again."""
    bin_dir = Path(sys.executable).parent
    home = tmp_path / "home"
    home.mkdir()
    # no venv on PATH (its `ray` is called by path, as in the docs); Ray's auth as the docs set it up
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "RAY_AUTH_MODE": "token",
           "RAY_worker_niceness": "0", "LANG": "C.UTF-8"}
    token = subprocess.run([str(bin_dir / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stderr[-2000:]
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


def _submit(address: str, env: dict[str, str], *entrypoint: str) -> subprocess.CompletedProcess:
    """The documented `ray job submit --working-dir . --runtime-env-json "$(... -m training.runtime_env)" -- ...`."""
    bin_dir = Path(sys.executable).parent
    runtime_env = subprocess.run([str(bin_dir / "python"), "-m", "training.runtime_env"], cwd=REPO, env=env,
                                 capture_output=True, text=True, check=True).stdout.strip()
    cmd = [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
           "--runtime-env-json", runtime_env, "--", *entrypoint]
    deadline = time.time() + 120
    while True:  # the dashboard answers before the node's job agent is up; submitting then is refused
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stderr + done.stdout or time.time() > deadline:
            return done
        time.sleep(3)


def test_ray_job_submit_runs_a_stage_as_documented(head_cluster, tmp_path):
    address, env = head_cluster
    runs = tmp_path / "runs"
    stage = ["python", "-m", "training.block_fm", "--smoke", "--storage-path", str(runs), "--name", "job",
             "--max-steps", "4", "--set", "checkpoint_every=2", "--set", "report_every=2"]
    done = _submit(address, env, *stage)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in out, out[-4000:]
    steps = [json.loads(line)["step"] for line in (runs / "job" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (runs / "job" / "checkpoint_00000004" / "meta.json").is_file()
    record = json.loads((runs / "job" / "dr2run.json").read_text())
    assert record["stage"] == "BlockFMTrainConfig"
    export = runs / "job" / "export"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in export.iterdir()}
    assert set(modes) == {"model.json", "model.safetensors", "dr2studio.json"}
    assert set(modes.values()) == {"0o644"}, modes  # the group can load the model (safetensors alone: 0600)

    # the same name with other settings is someone else's run: refused, with the reason, not resumed
    done = _submit(address, env, *stage, "--set", "lr=0.5")
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "has other settings (lr: 0.002 -> 0.5)" in out and "--resume" in out, out[-4000:]
    assert [json.loads(line)["step"] for line in (runs / "job" / "metrics.jsonl").read_text().splitlines()] == steps
