"""`ray job submit` of an `ipg run` (deploy/submit.sh) to a head on loopback with token auth on.

The head is a `ray start --head --block` process of its own (free ports; stopped with SIGTERM, which
drains and stops only that cluster, unlike `ray stop`).
"""

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

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from commands import run as run_command  # noqa: E402  (tests/commands.py)
from raytools import free_port  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("head")
    # every port the head takes is a free one: the test session's own local cluster already holds the
    # defaults (measured: a second agent on the default 52365 leaves the job API with "No available agent")
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "head.log", "w")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            "--num-cpus",
            "2",
            "--dashboard-agent-listen-port",
            str(agent),
            "--ray-client-server-port",
            str(client),
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{dash}"
    for _ in range(90):
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # up, and asking for the token
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(1)
    yield url, env
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def test_ray_job_submit_runs_ipg_on_the_cluster(head, tmp_path):
    url, env = head
    with pytest.raises(OSError):  # the dashboard listens on loopback only
        ip = socket.gethostbyname(socket.gethostname())
        if ip.startswith("127."):
            raise OSError("no external address to probe")
        socket.create_connection((ip, int(url.rsplit(":", 1)[1])), timeout=2)
    out = tmp_path / "out"
    result = run_command(
        [
            str(ROOT / "deploy" / "submit.sh"),
            "--address",
            url,
            "--id",
            "ipg-ci-smoke",
            "--",
            "--config",
            str(ROOT / "deploy" / "configs" / "smoke.yaml"),
            "--out",
            str(out),
        ],
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ray: 1 rollout (hf) + 1 gradient workers" in result.stdout  # attribution ran on the cluster's actors
    status = run_command(
        [str(BIN / "ray"), "job", "status", "--address", url, "ipg-ci-smoke"], env={**env, "RAY_AUTH_MODE": "token"}
    )
    assert "succeeded" in (status.stdout + status.stderr).lower()
    scores = pq.read_table(out / "scores.parquet")
    # PG over all 128 coordinates, then its top 32 (the default selection, component) re-scored
    assert scores.num_rows == 128 + 32 and set(scores.column("layer").to_pylist()) == {2}
    assert set(scores.column("method").to_pylist()) == {"pg", "component"}
    assert (
        pq.read_table(out / "eval.parquet").num_rows == 7
    )  # original + (component, the default + 2 random draws) x 2 gammas
    run = json.loads((out / "run.json").read_text())
    assert run["ray"]["local"] is False and (out / "report.md").is_file()


def test_a_failing_job_reports_failure(head, tmp_path):
    url, env = head
    result = run_command(
        [str(ROOT / "deploy" / "submit.sh"), "--address", url, "--", "--attribution.q=0"],
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "attribution.q: got 0; must be an integer >= 1" in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_submit_script_rejects_unknown_options():
    result = subprocess.run([str(ROOT / "deploy" / "submit.sh"), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option '--bogus'" in result.stderr
    result = subprocess.run([str(ROOT / "deploy" / "submit.sh"), "--command", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "--command 'nope': use run, sweep or attribute" in result.stderr
