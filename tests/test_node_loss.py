"""A node lost mid-run: a cluster of a head (no CPUs) and two 1-CPU worker nodes on 127.0.0.1, each a
`ray start --block` process of its own; one node's processes are killed after the first shard is merged.
Ray restarts the lost actors on the surviving node, the driver hands the lost shard out again, and the
run ends with the scores of an in-process run. Only the processes started here are stopped, by PID."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from raytools import assert_same_scores, free_port  # noqa: E402

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
SETTINGS = [
    "--model",
    "organism",
    "--limit",
    "16",
    "--layers",
    "1",
    "--attribution.method=pg",
    "--attribution.n_samples=3",
    "--attribution.max_new_tokens=48",
    "--attribution.completeness=false",
    "--quiet",
]


def _start(args, log, env):
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _kill_tree(proc) -> None:
    """The node's processes (its raylet, agents and workers) killed at once, as when a machine dies."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _wait_started(log: Path, n: int, head) -> None:
    """Until ``n`` `ray start` processes (head included) have printed that their node is up."""
    for _ in range(120):
        if log.read_text().count("Ray runtime started") >= n:
            return
        assert head.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(log.read_text()[-3000:])


@pytest.fixture
def cluster(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    log = open(tmp_path / "cluster.log", "w")
    head = _start(
        [
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "0",
            "--include-dashboard",
            "false",
            "--ray-client-server-port",
            str(free_port()),
        ],
        log,
        env,
    )
    _wait_started(tmp_path / "cluster.log", 1, head)
    env["RAY_AUTH_MODE"] = "token"  # the head's token authentication: its clients and nodes present the token
    nodes = []
    for i in range(2):  # one at a time, each on ports of its own (they share the machine)
        ports = [
            arg
            for flag in (
                "--node-manager-port",
                "--object-manager-port",
                "--metrics-export-port",
                "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port",
                "--runtime-env-agent-port",
            )
            for arg in (flag, str(free_port()))
        ]
        nodes.append(_start(["--address", f"127.0.0.1:{port}", "--num-cpus", "1", *ports], log, env))
        _wait_started(tmp_path / "cluster.log", 2 + i, head)
    yield f"127.0.0.1:{port}", nodes, env
    for p in nodes + [head]:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in nodes + [head]:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _kill_tree(p)


def test_a_node_lost_mid_run_costs_a_retry_not_the_run(cluster, tmp_path):
    address, nodes, env = cluster
    from ipg.driver.cli import main

    assert main(["attribute", *SETTINGS, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "ray"
    # one actor on each worker node (SPREAD), half a CPU each: the survivor can hold both after the loss
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipg.driver.cli",
            "attribute",
            *SETTINGS[:-1],
            "--address",
            address,
            "--ray.placement_strategy=SPREAD",
            "--ray.cpus_per_actor=0.5",
            "--ray.shard_size=2",
            "--ray.progress=lines",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines, killed = [], False
    for line in driver.stdout:
        lines.append(line)
        if not killed and "1/8 shards" in line:
            _kill_tree(nodes[0])
            killed = True
    assert driver.wait(timeout=600) == 0, "".join(lines)[-4000:]
    text = "".join(lines)
    print("".join(line for line in lines if "work lost" in line or "shards" in line))  # shown with -s
    assert killed and "work lost" in text and "again in" in text, text[-4000:]
    assert_same_scores(pq.read_table(out / "scores.parquet"), pq.read_table(tmp_path / "ref" / "scores.parquet"))
    # the results were written from the driver's node (the head), whatever node the actors were on
    nodes = json.loads((out / "attribution.json").read_text())["nodes"]
    assert nodes["reducer"] == nodes["driver"], nodes
