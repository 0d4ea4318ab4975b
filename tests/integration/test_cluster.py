"""A real 2-node Ray cluster on loopback: a study runs across both nodes and survives losing one."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import searched_spec, wait_for, write_spec

from fakd.results import open_study_dir, read_trials

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"  # two loopback addresses, so Ray sees two hosts
# Long enough (tens of seconds of CPU at eval_every=EVAL_EVERY) that the test reliably sees a trial mid-run on
# the worker node, even on a fast machine where 24 iterations pass in under a second.
ITERS, EVAL_EVERY = 600, 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start --block` in its own process group, so the node (raylet, workers) can be killed alone."""
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Ray workers are children of their node's raylet)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL a node started by `start_node`: `ray start`, its raylet, object store and workers."""
    for pid in descendants(node.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait()


@pytest.fixture
def two_node_cluster(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    head = start_node(["--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", "--include-dashboard=false"],
                      env, tmp_path / "head.log")
    address = f"{HEAD_IP}:{port}"
    wait_for(lambda: subprocess.run([RAY, "status", f"--address={address}"], env=env,
                                    capture_output=True).returncode == 0, 60, "the head node")
    worker = start_node([f"--address={address}", f"--node-ip-address={WORKER_IP}"], env, tmp_path / "worker.log")

    def two_nodes() -> bool:
        out = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True).stdout
        return out.count("node_") >= 2

    wait_for(two_nodes, 60, "the worker node")
    yield address, env, worker
    kill_node(worker)
    kill_node(head)


def trial_results(study_dir: Path) -> dict[str, list[dict]]:
    """Each search trial's recorded evaluations (the study's own records, written by the driver)."""
    found = {}
    for path in study_dir.glob("trials/search/*/results.jsonl"):
        found[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines()]
    return found


def test_study_on_two_nodes_survives_losing_one(tmp_path, two_node_cluster, given_teacher):
    address, env, worker = two_node_cluster
    raw = searched_spec(["kd"], num_samples=3, max_concurrent=2, scheduler="none", max_failures=3)
    raw["train"].update(iters=ITERS, eval_every=EVAL_EVERY)
    raw["teacher"]["checkpoint"] = str(given_teacher)
    spec = write_spec(tmp_path, raw)
    study_dir = tmp_path / "studies" / "tiny"
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "sweep", str(spec), "--storage", str(tmp_path / "studies"),
         "--address", address],
        cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=open(tmp_path / "driver.log", "w"),
        stderr=subprocess.STDOUT,
    )

    def running_on_worker_node() -> bool:
        return any(rows and rows[-1].get("node") == WORKER_IP and rows[-1]["iteration"] < ITERS
                   for rows in trial_results(study_dir).values())

    try:
        wait_for(running_on_worker_node, 240, "a trial running on the worker node", driver=driver,
                 log=tmp_path / "driver.log")
        on_worker = {name for name, rows in trial_results(study_dir).items()
                     if rows and rows[-1].get("node") == WORKER_IP and rows[-1]["iteration"] < ITERS}
        kill_node(worker)
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()

    records = read_trials(open_study_dir(study_dir))
    assert [r.state for r in records] == ["COMPLETE"] * 3
    results = trial_results(study_dir)
    for name in on_worker:
        nodes = [row["node"] for row in results[name]]
        iterations = [row["iteration"] for row in results[name]]
        assert nodes[-1] == HEAD_IP and iterations[-1] == ITERS, nodes
        assert iterations == sorted(set(iterations)), f"retried from scratch, not from its checkpoint: {iterations}"
