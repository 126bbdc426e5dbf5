"""The 'ray' launcher on a real two-node Ray cluster.

Ray's multi-node-on-one-host set-up: a head node started as `adaptflow stack up --ray` starts it
(infra/ray_stack.py) and a worker node joined with `ray start --block`, with raylets of their own at 127.0.0.1 and
127.0.0.2, one CPU each, so Ray has to place a 2-worker run's workers on both nodes. (Nodes in a network namespace, as the
torchrun test does, would not reach the tests' S3 server, which listens on loopback only.)
Checkpoints go to the tests' SeaweedFS server, as Ray Train's RunConfig(storage_path).

- A 2-worker run through the flow registers one version, and its loss curve matches a
  1-process run at the same global batch within the DDP tolerance of test_distributed.py.
- The worker node's training process is killed mid-run: Ray Train (FailureConfig) restarts
  the worker group, every worker restores the last checkpoint from S3, and the run ends
  where an uninterrupted run ends. This run names no cluster: it finds the stack's head.
- The stack finds, reports and stops its head.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from adaptflow.flows.adapt import adapt
from adaptflow.infra.ray_stack import RayStack
from adaptflow.tasks.config import load_config
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.registry.store import list_versions
from adaptflow.tasks.storage.s3 import make_client
from adaptflow.tasks.training.engine import EVENT_PREFIX
from adaptflow.tasks.training.launch import run_training
from adaptflow.tasks.training.ray_train import CHECKPOINT_FOLDER
from tests.integration.conftest import tiny_config, wait_for
from tests.model_fixtures import build_tiny_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (the 'ray' extra)")

STEPS = 128  # ~0.1 s a step: Ray commits the first checkpoint some 50 steps after it is reported; the kill lands well before the end
CHECKPOINT_EVERY = 8
HEAD_IP, NODE_IP = "127.0.0.1", "127.0.0.2"  # both on the loopback interface: one raylet (node) each


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    """A Ray node of one CPU in a session of its own (the worker node; the head comes from `adaptflow stack up --ray`)."""
    ray = str(Path(sys.executable).with_name("ray"))
    with log.open("w") as out:
        return subprocess.Popen(
            [ray, "start", *args, "--block", "--num-cpus=1", "--disable-usage-stats"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _nodes(address: str) -> int:
    status = subprocess.run([str(Path(sys.executable).with_name("ray")), "status", f"--address={address}"], capture_output=True, text=True)
    return len(re.findall(r"^ 1 node_", status.stdout, flags=re.M))


def _kill_session(proc: subprocess.Popen) -> None:
    members = [p for p in psutil.process_iter(["pid"]) if _session(p) == proc.pid]
    for member in members:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(30)


def _session(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head node started as `adaptflow stack up --ray --ray-cpus 1` starts it (in-process: the command
    is a thin wrapper) and a worker node joined with `ray start` (two raylets, at 127.0.0.1 and 127.0.0.2);
    yields the head's address, the stack's home and the worker node's process."""
    home = tmp_path_factory.mktemp("ray-home")
    stack = RayStack(home)
    node = None
    try:
        head = stack.up(cpus=1)
        address = head.address
        assert address.startswith(f"{HEAD_IP}:") and stack.status() == head
        node = _ray_start([f"--address={address}", f"--node-ip-address={NODE_IP}"], home / "node.log")
        wait_for(lambda: "Ray runtime started" in (home / "node.log").read_text() or node.poll() is not None, 120, "the worker node")
        wait_for(lambda: _nodes(address) == 2 or node.poll() is not None, 60, "the worker node to join", interval=1.0)
        assert node.poll() is None, (home / "node.log").read_text()[-3000:]
        yield {"address": address, "home": home, "node": node, "node_ip": NODE_IP}
    finally:
        if node is not None:
            _kill_session(node)  # the worker node's processes: its `ray start` session
        running = stack.status()
        assert stack.down() == (running is not None)
        assert running is None or not psutil.pid_exists(running.pid) or psutil.Process(running.pid).status() == psutil.STATUS_ZOMBIE


def _config(model: Path, data: Path, work: Path, address: str | None, workers: int, **sections) -> dict:
    training = {"max_steps": STEPS, "batch_size": 16 // workers, "checkpoint_every": CHECKPOINT_EVERY, "log_every": 1, "warmup_ratio": 0.0}
    launch = {"launcher": "ray", "num_processes": workers, "ray_address": address, "max_restarts": 1}
    return tiny_config(model, data, work, training=training, launch=launch, **sections)


@pytest.fixture(scope="module")
def dropout_free_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("ray-model") / "model", dropout=0.0)  # no dropout: runs agree to rounding


UNINTERRUPTED: dict[str, dict] = {}
"""The 2-worker run's metrics, for the kill test to compare with (computed once per module)."""


def _losses(metrics: dict) -> list[float]:
    return [h["train_loss"] for h in metrics["history"]]


def _placements(worker_log: Path) -> list[str]:
    """The lines in which each Ray Train worker said where Ray placed it (log events of the run's worker.log)."""
    messages = [
        json.loads(line[len(EVENT_PREFIX) :]).get("message", "")
        for line in worker_log.read_text().splitlines()
        if line.startswith(EVENT_PREFIX)
    ]
    return [m for m in messages if m.startswith("Ray Train worker ")]


@pytest.mark.usefixtures("prefect_api")
def test_two_ray_workers_on_two_nodes_register_one_version_that_matches_one_worker(
    ray_cluster, s3_env, dropout_free_model, reviews_csv, tmp_path
):
    one_raw = _config(dropout_free_model, reviews_csv, tmp_path / "work", ray_cluster["address"], 1)
    one_cfg = load_config({**one_raw, "launch": {"launcher": "local"}})  # the 1-process reference: no Ray
    prepared = prepare_data(one_cfg.data, dropout_free_model, tmp_path / "work")
    one = run_training(one_cfg, prepared.path, dropout_free_model, tmp_path / "one")

    two_raw = _config(dropout_free_model, reviews_csv, tmp_path / "work", ray_cluster["address"], 2, registry={"model_name": "ray-two"})
    summary = adapt(config=load_config(two_raw))
    run_dir = Path(summary["run_dir"])
    two = json.loads((run_dir / "metrics.json").read_text())
    UNINTERRUPTED["two"] = two

    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert one["examples_seen"] == two["examples_seen"] == STEPS * 16
    placements = _placements(run_dir / "worker.log")
    assert len(placements) == 2 and any(ray_cluster["node_ip"] in line for line in placements), placements  # one worker per node
    assert [v.version for v in list_versions(s3_env, "ray-two")] == [1]
    # Same tolerance as the torchrun DDP parity test: 0.5% per logged step and on the final evaluation loss.
    assert _losses(one)[-1] < _losses(one)[0]
    assert _losses(two) == pytest.approx(_losses(one), rel=5e-3)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=5e-3)
    print(f"ray: 1 local process {one['samples_per_s']:.1f} samples/s, 2 Ray workers on 2 nodes {two['samples_per_s']:.1f} samples/s")


def _committed(client, bucket: str, key: str) -> int | None:
    """The step of the newest checkpoint Ray has committed (its checkpoint manager's snapshot), if any."""
    try:
        snapshot = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    return (latest.get("metrics") or {}).get("step")


PLACEMENT = re.compile(r"Ray Train worker \d+ of \d+ on node (\S+) \(pid (\d+)\)")


def _training_workers_on(node_ip: str, lines: list[str]) -> list[psutil.Process]:
    """The training processes Ray placed on ``node_ip`` (each worker says where it runs, with its pid)."""
    return [psutil.Process(int(m[2])) for m in map(PLACEMENT.match, lines) if m and m[1] == node_ip]


def test_killed_worker_node_process_is_restarted_by_ray_from_the_s3_checkpoint(
    ray_cluster, s3_env, dropout_free_model, reviews_csv, tmp_path, monkeypatch
):
    # no address given: the run finds the head `adaptflow stack up --ray` started, as a user's run would
    monkeypatch.setenv("ADAPTFLOW_HOME", str(ray_cluster["home"]))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(_config(dropout_free_model, reviews_csv, tmp_path / "work", None, 2, registry={"register_model": False}))
    prepared = prepare_data(cfg.data, dropout_free_model, tmp_path / "work")
    if "two" not in UNINTERRUPTED:  # run alone (-k): make the uninterrupted run here
        UNINTERRUPTED["two"] = run_training(cfg, prepared.path, dropout_free_model, tmp_path / "uninterrupted")
    run_dir = tmp_path / "killed"
    lines: list[str] = []
    events: list[tuple[float, dict]] = []
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["metrics"] = run_training(
                cfg,
                prepared.path,
                dropout_free_model,
                run_dir,
                on_line=lines.append,
                on_event=lambda e: events.append((time.monotonic(), e)),
            )
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    # Ray uploads checkpoints in the background and records each it has committed in its checkpoint
    # manager's snapshot on S3: once that names one, a restart must resume from it (or a later one)
    snapshot = s3_env.key(CHECKPOINT_FOLDER, run_dir.name, "checkpoint_manager_snapshot.json")
    client = make_client(s3_env)
    committed = wait_for(
        lambda: _committed(client, s3_env.bucket, snapshot) or not thread.is_alive(), 300, f"s3://{s3_env.bucket}/{snapshot}"
    )
    assert thread.is_alive(), outcome
    victims = _training_workers_on(ray_cluster["node_ip"], lines)
    assert victims, "no Ray Train worker on the worker node"
    under_node = {p.pid for p in psutil.Process(ray_cluster["node"].pid).children(recursive=True)}
    assert {v.pid for v in victims} <= under_node  # processes of the worker node's raylet
    for proc in victims:
        proc.kill()
    killed_at = time.monotonic()
    killed_step = max(e["step"] for _, e in events if e["type"] == "progress")
    thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    metrics = outcome["metrics"]
    restored = [line for line in lines if line.startswith("restored step-")]
    assert restored and "ray-checkpoints" in restored[0], "\n".join(lines)  # from Ray's storage on S3, not a local folder
    assert metrics["resumed_from_step"] is not None and committed <= metrics["resumed_from_step"] <= killed_step
    assert metrics["steps"] == STEPS and metrics["num_processes"] == 2
    reference = UNINTERRUPTED["two"]
    # Resumed runs replay the same batches with the same RNG states: 0.1% (as the torchrun kill test).
    assert _losses(metrics) == pytest.approx(_losses(reference), rel=1e-3)
    assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-3)
    restarted = next(t for t, e in events if e["type"] == "start" and e["resumed_from_step"] is not None)
    back = next(t for t, e in events if t > restarted and e["type"] == "progress")  # the restarted group's first step
    print(
        f"ray: worker killed at step {killed_step}; training again from step {metrics['resumed_from_step']} "
        f"{back - killed_at:.1f} s after the kill; the run ended {time.monotonic() - killed_at:.1f} s after it"
    )
