"""The 'ray' launcher's parts that need no cluster: settings, the driver command, where the
cluster and the checkpoints are, and the one message for a run Ray Train gave up on.
(tests/integration/test_ray_cluster.py runs it on a real two-node cluster.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from adaptflow.tasks.config import load_config
from adaptflow.tasks.errors import ConfigError, TrainingError
from adaptflow.tasks.storage.settings import S3Settings
from adaptflow.tasks.training.checks import LOCAL_HEAD_FILE, check_ray_launch, cluster_address
from adaptflow.tasks.training.launch import checkpoint_mirror, launch_command, other_node_commands, worker_env
from adaptflow.tasks.training.ray_train import checkpoint_storage, gave_up

pyarrow = pytest.importorskip("pyarrow")


def _cfg(**launch):
    return load_config({"launch": {"launcher": "ray", **launch}, "training": {"checkpoint_uri": "s3://bucket/ckpt"}})


def test_the_driver_runs_in_place_of_torchrun_and_keeps_the_s3_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    cfg = _cfg(num_processes=4)
    assert launch_command(cfg, tmp_path / "run_spec.json") == [
        sys.executable,
        "-m",
        "adaptflow.tasks.training.ray_train",
        str(tmp_path / "run_spec.json"),
    ]
    assert other_node_commands(cfg, tmp_path / "run_spec.json") == []  # Ray places the workers
    assert worker_env(cfg)["AWS_SECRET_ACCESS_KEY"] == "very-secret"  # Ray Train writes the checkpoints to S3 with it
    assert "AWS_SECRET_ACCESS_KEY" not in worker_env(load_config({}))  # a local worker never sees it
    assert checkpoint_mirror(cfg) is None  # Ray keeps them at checkpoint_uri itself, no second copy


@pytest.mark.parametrize(
    ("launch", "message"),
    [
        ({"nnodes": 2}, "num_processes is the number of workers in all"),
        ({"accelerate_config": "ddp"}, "leave launch.accelerate_config empty"),
        ({"ray_cpus_per_worker": 0}, "ray_cpus_per_worker"),
    ],
)
def test_ray_settings_that_cannot_work_are_refused(launch, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**launch)


def test_the_cluster_is_the_config_then_ray_address_then_the_local_head(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="no Ray cluster is given") as caught:
        cluster_address(_cfg().launch)
    assert "adaptflow stack up --ray" in str(caught.value)
    head = tmp_path / LOCAL_HEAD_FILE
    head.parent.mkdir(parents=True)
    head.write_text(json.dumps({"pid": os.getpid(), "address": "127.0.0.1:6390"}))  # a live process: this one
    assert cluster_address(_cfg().launch) == "127.0.0.1:6390"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address(_cfg().launch) == "10.0.0.5:6379"
    assert cluster_address(_cfg(ray_address="head.example:6379").launch) == "head.example:6379"
    head.write_text(json.dumps({"pid": 2**22 + 12345, "address": "127.0.0.1:6390"}))  # the head is gone
    monkeypatch.delenv("RAY_ADDRESS")
    assert check_ray_launch(_cfg().launch)[-1].where == "launch.ray_address"


def test_checkpoints_go_to_checkpoint_uri_or_next_to_the_registry_with_its_endpoint_and_keys():
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:8333", bucket="adaptflow", prefix="team", access_key_id="AK", secret_access_key="SK"
    )
    path, uri, filesystem = checkpoint_storage(None, settings)
    assert (path, uri) == ("adaptflow/team/ray-checkpoints", "s3://adaptflow/team/ray-checkpoints")
    assert isinstance(filesystem, pyarrow.fs.S3FileSystem)
    assert filesystem.region == "us-east-1"
    assert checkpoint_storage("s3://other/ckpt/", settings)[:2] == ("other/ckpt", "s3://other/ckpt")
    assert "SK" not in repr(filesystem)


def test_a_run_ray_gave_up_on_is_one_problem_naming_the_cause_and_not_retried():
    error = RuntimeError(
        "Training failed due to worker errors:\n[Rank 1 Error Snippet]:\nTraceback (most recent call last):\n"
        '  File "x.py", line 1\n... (Output truncated) ...\nOSError: Could not connect to server 127.0.0.1:9000\n'
    )
    problem = gave_up(error, 2)
    assert isinstance(problem, TrainingError)  # the train task retries only WorkerCrashed
    (only,) = problem.problems
    assert only.what == "the run failed after 2 restart(s) of its worker group: OSError: Could not connect to server 127.0.0.1:9000"
    assert "ray logs" in only.fix


def test_the_driver_reports_a_missing_cluster_as_one_error_event(monkeypatch, tmp_path):
    from adaptflow.tasks.training.engine import EVENT_PREFIX, RunSpec
    from adaptflow.tasks.training.ray_train import main

    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("adaptflow.tasks.training.ray_train.die_with_parent", lambda: None)
    spec = RunSpec(_cfg(), tmp_path / "prepared", tmp_path / "model", tmp_path / "run").write()
    lines: list[str] = []
    monkeypatch.setattr("builtins.print", lambda line, **kw: lines.append(line))
    assert main([str(spec)]) == 2
    (event,) = [json.loads(line[len(EVENT_PREFIX) :]) for line in lines if line.startswith(EVENT_PREFIX)]
    assert event["kind"] == "ConfigError" and event["problems"][0]["where"] == "launch.ray_address"


def test_stack_head_state_without_a_live_process_is_not_a_cluster(tmp_path):
    from adaptflow.infra.ray_stack import RayStack

    stack = RayStack(tmp_path)
    stack.state_path.parent.mkdir(parents=True)
    stack.state_path.write_text(
        json.dumps({"pid": os.getpid(), "address": "127.0.0.1:1", "cpus": 1, "stack_id": "x", "log_path": "", "started_at": ""})
    )
    assert stack.status() is None  # this process is alive but was not started by `stack up`
    assert stack.down() is False and not Path(stack.state_path).exists()
