"""Errors found before any work: derived names valid by construction, model folders checked as they load,
and which training failures are worth a retry."""

from __future__ import annotations

import shutil

import pytest

from adaptflow.flows.preflight import check_inputs
from adaptflow.tasks.base_model import inspect_model
from adaptflow.tasks.config import NAME_PATTERN, load_config, slug, validate_name
from adaptflow.tasks.errors import ConfigError, DataError, ModelError, Problem, TrainingError, WorkerCrashed
from adaptflow.tasks.training.launch import fresh_log, is_noise, retry_after_crash
from tests.model_fixtures import build_tiny_model


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Rëviews ..(copy) ÿ", "reviews-copy-y"),
        ("reviews", "reviews"),
        ("My Data.v2", "my-data-v2"),
        ("..", "model"),
        ("", "model"),
        ("日本語のレビュー", "model"),  # nothing ASCII is left
        ("--__Straße__--", "strasse"),
        ("a" * 30 + " " + "b" * 30, "a" * 30 + "-" + "b" * 9),
        ("x" * 39 + "..y", "x" * 39),  # cut at 40, the trailing '-' dropped
    ],
)
def test_slug_of_nasty_names(text, expected):
    assert slug(text) == expected


@pytest.mark.parametrize("stem", ["Rëviews ..(copy) ÿ", "..", "日本語", "a" * 200, " . ", "DATA__2026.12.01 (final)", "x" * 39 + "..y"])
@pytest.mark.parametrize("strategy", ["transfer_learning", "partial_fine_tuning", "lora"])
def test_derived_model_names_are_valid_registry_names(tmp_path, stem, strategy):
    cfg = load_config({"data": {"data": str(tmp_path / f"{stem}.csv")}, "strategy": {"name": strategy}})
    name = cfg.model_name()
    assert validate_name(name) == name
    assert NAME_PATTERN.match(name) and ".." not in name and len(name) <= 63


def test_compressed_data_names_like_its_plain_version(tmp_path):
    plain = load_config({"data": {"data": str(tmp_path / "reviews.csv")}})
    packed = load_config({"data": {"data": str(tmp_path / "reviews.csv.gz")}})
    assert packed.model_name() == plain.model_name() == "reviews-transfer-learning"


def test_odd_file_name_derives_the_name_in_the_issue(tmp_path):
    cfg = load_config({"data": {"data": str(tmp_path / "Rëviews ..(copy) ÿ.csv")}})
    assert cfg.model_name() == "reviews-copy-y-transfer-learning"


def _copy_without_weights(src, dest):
    dest.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dest / f.name)
    return dest


def test_pickled_weights_beside_an_unrelated_safetensors_file_are_refused(tmp_path):
    model = build_tiny_model(tmp_path / "tiny")
    stray = _copy_without_weights(model, tmp_path / "stray")
    (stray / "pytorch_model.bin").write_bytes(b"never unpickled")
    shutil.copy(model / "model.safetensors", stray / "x.safetensors")
    with pytest.raises(ModelError) as info:
        inspect_model(stray)
    message = str(info.value)
    assert "\n" not in message  # one line
    assert "model.safetensors" in message and "pytorch_model.bin" in message and "x.safetensors" in message
    assert info.value.exit_code == 2


def test_a_sharded_model_with_its_index_passes(tmp_path):
    model = build_tiny_model(tmp_path / "tiny")
    sharded = _copy_without_weights(model, tmp_path / "sharded")
    shutil.copy(model / "model.safetensors", sharded / "model-00001-of-00001.safetensors")
    (sharded / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    assert inspect_model(sharded).num_layers == 2


def test_preflight_refuses_an_invalid_registry_name_as_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # no S3 here: its problem is reported beside
    model = build_tiny_model(tmp_path / "tiny")
    # a config built past its validation, as a flow run's parameters may be: the preflight checks the name again
    cfg = load_config({"model": str(model), "registry": {"register_model": False}, "work_dir": str(tmp_path / "w")})
    bad = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"register_model": True, "model_name": "a..b"})})
    _, found = check_inputs(bad)
    names = [e for e in found if isinstance(e, ConfigError)]
    assert len(names) == 1 and "registry.model_name" in str(names[0]) and names[0].exit_code == 2


class _State:
    def __init__(self, data):
        self.data = data


class _ResultRecord:  # what Prefect keeps in a failed state when results are persisted
    def __init__(self, result):
        self.result = result


@pytest.mark.parametrize(
    "error, retried",
    [
        (WorkerCrashed(Problem("training worker", "exited with code -9")), True),
        (TrainingError(Problem("training", "the loss became nan")), False),
        (ModelError(Problem("model", "bad")), False),
        (ConfigError(Problem("training.batch_size", "bad")), False),
        (DataError(Problem("data.csv", "bad")), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_a_crashed_worker_is_retried(error, retried):
    assert retry_after_crash(None, None, _State(error)) is retried
    assert retry_after_crash(None, None, _State(_ResultRecord(error))) is retried


def test_a_retry_keeps_the_earlier_attempts_logs(tmp_path):
    assert fresh_log(tmp_path) == tmp_path / "worker.log"
    for attempt in (1, 2):
        (tmp_path / "worker.log").write_text(f"attempt {attempt}\n")
        assert fresh_log(tmp_path) == tmp_path / "worker.log"
        assert (tmp_path / f"worker.attempt{attempt}.log").read_text() == f"attempt {attempt}\n"
    assert not (tmp_path / "worker.log").exists()


@pytest.mark.parametrize(
    "line, noise",
    [
        ("", True),
        ("   ", True),
        ("Map:  40%|####      | 4/10 [00:01<00:02,  3.1 examples/s]", True),
        ("RuntimeError: Connection closed by peer", False),
        ('  File "worker.py", line 3, in main', False),
    ],
)
def test_progress_bars_and_blank_lines_are_not_quoted(line, noise):
    assert is_noise(line) is noise


CHILD = """
import sys, time
import adaptflow.tasks.training.worker as worker
if sys.argv[1] == "watchdog-only":
    worker.sys.platform = "other"  # no prctl: only the thread watching os.getppid()
worker.die_with_parent(interval_s=0.1)
print("ready", flush=True)
time.sleep(120)
"""
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline() == "ready\\n"
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.parametrize("mode", ["parent-death-signal", "watchdog-only"])
def test_a_worker_dies_with_the_process_that_started_it(mode):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, mode], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running() and child.ppid() == parent.pid
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, f"{mode}: the worker outlived its parent"
    finally:
        parent.kill()
        parent.wait()
