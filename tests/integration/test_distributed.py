"""Several training processes and nodes on CPU (gloo), and surviving a killed worker.

- DDP parity: 2 processes x batch 8 follow the same loss curve as 1 process x batch 16.
- Kill and resume: one worker killed mid-run; Prefect's retry resumes from the last
  checkpoint and ends where an uninterrupted run ends.
- Two nodes: two network namespaces' worth of hosts (this one and a namespace joined by
  a veth pair, private addresses of our own) meet through torchrun's static rendezvous.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from adaptflow.flows.adapt import adapt
from adaptflow.tasks.config import load_config
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.errors import WorkerCrashed
from adaptflow.tasks.registry.store import list_versions
from adaptflow.tasks.training.launch import run_training
from tests.integration.conftest import free_port, tiny_config, wait_for
from tests.model_fixtures import build_tiny_model


def _train(model_dir, prepared, run_dir, **sections) -> dict:
    cfg = load_config({"model": str(model_dir), "data": {"max_length": 32}, **sections})
    return run_training(cfg, prepared.path, model_dir, run_dir)


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, reviews_csv):
    model = build_tiny_model(tmp_path / "model", dropout=0.0)  # no dropout: the runs must agree to rounding
    prepared = prepare_data(load_config({"data": {"data": str(reviews_csv), "max_length": 32}}).data, model, tmp_path / "work")
    training = {"max_steps": 12, "learning_rate": 1e-3, "log_every": 1, "warmup_ratio": 0.0}
    strategy = {"name": "full_fine_tuning"}
    one = _train(model, prepared, tmp_path / "one", strategy=strategy, training={**training, "batch_size": 16})
    two = _train(model, prepared, tmp_path / "two", strategy=strategy, training={**training, "batch_size": 8}, launch={"num_processes": 2})
    assert two["num_processes"] == 2 and one["examples_seen"] == two["examples_seen"] == 12 * 16
    losses_one = [h["train_loss"] for h in one["history"]]
    losses_two = [h["train_loss"] for h in two["history"]]
    assert losses_one[-1] < losses_one[0]  # it learned something
    # Stated tolerance: 0.5% relative per logged step, 0.5% on the final evaluation loss
    # (all-reduce sums gradients in another order than one process does).
    assert losses_two == pytest.approx(losses_one, rel=5e-3)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=5e-3)


def _worker_processes(spec_marker: str) -> list[psutil.Process]:
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "adaptflow.tasks.training.worker" in cmd and any(spec_marker in part for part in cmd) and "torch.distributed.run" not in cmd:
            procs.append(proc)
    return procs


@pytest.mark.usefixtures("prefect_api")
def test_killed_worker_resumes_from_checkpoint_and_matches_an_uninterrupted_run(s3_env, reviews_csv, tmp_path):
    model = build_tiny_model(tmp_path / "model", layers=4, hidden=256)  # slow enough to be killed mid-run
    sections = {
        "strategy": {"name": "full_fine_tuning"},
        "training": {
            "max_steps": 40,
            "checkpoint_every": 5,
            "batch_size": 8,
            "log_every": 5,
            "learning_rate": 3e-4,
            "mixed_precision": "no",
        },
        "launch": {"num_processes": 2, "retries": 1},
    }
    work = tmp_path / "work"
    interrupted = load_config({**tiny_config(model, reviews_csv, work), **sections, "registry": {"model_name": "killed"}})
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = adapt(config=interrupted)
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    runs = work / "runs" / "killed"
    wait_for(lambda: list(runs.glob("*/checkpoints/step-0000010/loop_state.json")), 240, "the step-10 checkpoint")
    victims = wait_for(lambda: _worker_processes(str(runs)), 30, "the worker processes")
    victims[-1].send_signal(signal.SIGKILL)
    thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    run_dir = Path(summary["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 40
    assert metrics["resumed_from_step"] is not None and 10 <= metrics["resumed_from_step"] < 40
    assert "resuming from checkpoint" in (run_dir / "worker.log").read_text()
    assert '"type": "progress"' in (run_dir / "worker.attempt1.log").read_text()  # the killed attempt's log is kept
    assert [v.version for v in list_versions(s3_env, "killed")] == [1]

    reference = load_config(
        {**tiny_config(model, reviews_csv, tmp_path / "work-ref"), **sections, "registry": {"model_name": "uninterrupted"}}
    )
    ref_summary = adapt(config=reference)
    ref_metrics = json.loads((Path(ref_summary["run_dir"]) / "metrics.json").read_text())
    assert ref_metrics["resumed_from_step"] is None
    assert metrics["eval_loss"] == pytest.approx(ref_metrics["eval_loss"], rel=1e-3)
    resumed_head = load_file(str(run_dir / "model" / "head.safetensors"))
    reference_head = load_file(str(Path(ref_summary["run_dir"]) / "model" / "head.safetensors"))
    for key, value in reference_head.items():
        assert torch.allclose(resumed_head[key], value, atol=1e-4), key


def _run_processes(marker: str) -> list[psutil.Process]:
    """Every process whose command line names the run (torchrun's agent and its ranks)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def test_killing_the_torchrun_agent_ends_its_ranks_and_the_log_follows_the_run(tiny_bert_dir, reviews_csv, tmp_path):
    prepared = prepare_data(load_config({"data": {"data": str(reviews_csv), "max_length": 32}}).data, tiny_bert_dir, tmp_path / "work")
    run_dir = tmp_path / "orphans"
    cfg = load_config(
        {
            "model": str(tiny_bert_dir),
            "data": {"max_length": 32},
            "strategy": {"name": "full_fine_tuning"},
            "training": {"max_steps": 100000, "batch_size": 8, "log_every": 1},
            "launch": {"num_processes": 2},
        }
    )
    outcome: dict = {}

    def run() -> None:
        try:
            run_training(cfg, prepared.path, tiny_bert_dir, run_dir)
        except BaseException as exc:  # expected: the run is killed; checked below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    log = run_dir / "worker.log"
    # line-buffered: the progress of the running ranks is in the log while they train
    wait_for(lambda: log.is_file() and '"type": "progress"' in log.read_text(), 240, "progress lines in worker.log")
    ranks = wait_for(lambda: len(_worker_processes(str(run_dir))) == 2 and _worker_processes(str(run_dir)), 30, "both ranks")
    (agent,) = {rank.parent() for rank in ranks}
    assert "torch.distributed.run" in agent.cmdline()
    agent.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not _run_processes(str(run_dir)), 5, "every process of the run to end")
    assert time.monotonic() - killed_at < 5
    thread.join(60)
    assert isinstance(outcome.get("error"), WorkerCrashed), outcome
    assert "worker.log" in str(outcome["error"])


# ---- two nodes -------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_two_node_run_completes_and_registers_one_version(second_host, s3_env, tiny_bert_dir, reviews_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", second_host["host_if"])
    raw = tiny_config(
        tiny_bert_dir,
        reviews_csv,
        tmp_path / "work",
        launch={
            "launcher": "multinode",
            "nnodes": 2,
            "num_processes": 1,
            "master_addr": second_host["host_addr"],
            "master_port": free_port(),
        },
        registry={"model_name": "two-nodes"},
    )
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=adapt(config=load_config(raw))))
    thread.start()
    commands = wait_for(lambda: list((tmp_path / "work" / "runs" / "two-nodes").glob("*/node_commands.txt")), 120, "node_commands.txt")
    (line,) = commands[0].read_text().splitlines()
    node1 = subprocess.run(
        ["ip", "netns", "exec", second_host["ns"], "env", f"GLOO_SOCKET_IFNAME={second_host['peer_if']}", *shlex.split(line)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    thread.join(300)
    assert node1.returncode == 0, node1.stdout[-2000:] + node1.stderr[-2000:]
    summary = outcome["summary"]
    metrics = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    assert metrics["num_processes"] == 2  # world size across both hosts
    assert "--node-rank 1" in line
    assert [v.version for v in list_versions(s3_env, "two-nodes")] == [1]


def test_elastic_run_takes_back_a_node_that_dropped_out(second_host, tiny_bert_dir, reviews_csv, tmp_path, monkeypatch):
    """Elastic torchrun (c10d rendezvous, 2:2 nodes, 3 restarts): node 1 is killed mid-run; node 0's
    agent restarts its worker and waits at the rendezvous; node 1 is started again, rejoins, and the
    run ends with both nodes, resumed from the last checkpoint. (With --min-nodes 1 node 0 would
    carry on alone, and whether node 1 is back before the end would be a race.)"""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", second_host["host_if"])
    raw = tiny_config(
        tiny_bert_dir,
        reviews_csv,
        tmp_path / "work",
        training={"max_steps": 40, "checkpoint_every": 4, "log_every": 1},
        launch={
            "launcher": "multinode",
            "nnodes": 2,
            "min_nodes": 2,
            "max_restarts": 3,
            "master_addr": second_host["host_addr"],
            "master_port": free_port(),
        },
    )
    cfg = load_config(raw)
    prepared = prepare_data(cfg.data, tiny_bert_dir, tmp_path / "work")
    run_dir = tmp_path / "work" / "runs" / "elastic" / "20261203T000000Z-elastic"
    lines: list[str] = []
    outcome: dict = {}

    def node0() -> None:
        try:
            outcome["metrics"] = run_training(cfg, prepared.path, tiny_bert_dir, run_dir, on_line=lines.append)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=node0)
    thread.start()
    (line,) = wait_for(
        lambda: (run_dir / "node_commands.txt").is_file() and (run_dir / "node_commands.txt").read_text().splitlines(), 60, "node commands"
    )
    assert "--rdzv-backend c10d" in line and "--nnodes 2:2" in line
    # PET_LOCAL_ADDR: the address the others reach this node at (its hostname names the first host's)
    node1_env = [f"GLOO_SOCKET_IFNAME={second_host['peer_if']}", f"PET_LOCAL_ADDR={second_host['peer_addr']}"]
    node1_command = ["ip", "netns", "exec", second_host["ns"], "env", *node1_env, *shlex.split(line)]
    first_log = (tmp_path / "node1.log").open("w")
    node1 = subprocess.Popen(node1_command, stdout=first_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: list(run_dir.glob("checkpoints/step-*/loop_state.json")) or node1.poll() is not None, 180, "the first checkpoint")
        assert node1.poll() is None, (tmp_path / "node1.log").read_text()[-3000:]
        # the whole node at once: its agent and its worker (torchrun starts workers in sessions of their own)
        for proc in [psutil.Process(node1.pid), *psutil.Process(node1.pid).children(recursive=True)]:
            proc.kill()
        node1.wait(10)
        killed_at = time.monotonic()
        log1 = tmp_path / "node1-again.log"
        with log1.open("w") as out:
            again = subprocess.Popen(node1_command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            assert again.wait(300) == 0, log1.read_text()[-3000:]
        thread.join(300)
    finally:
        for proc in (node1, locals().get("again")):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert "error" not in outcome, outcome.get("error")
    metrics = outcome["metrics"]
    assert metrics["steps"] == 40 and metrics["num_processes"] == 2  # finished with both nodes again
    assert metrics["resumed_from_step"] is not None and metrics["resumed_from_step"] >= 4
    print(
        f"elastic: node 1 back and the run finished {time.monotonic() - killed_at:.1f} s after the kill; resumed from step {metrics['resumed_from_step']}"
    )
