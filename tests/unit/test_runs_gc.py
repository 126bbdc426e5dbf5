"""``adaptflow runs gc`` on fake run folders: what is kept, what is removed, and why."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptflow.flows.runs import gc_runs
from adaptflow.tasks.errors import ConfigError

DAY = 86400.0
NOW = time.time()


def fake_run(work: Path, model: str, name: str, days_idle: float, checkpoints: bool = True) -> Path:
    """A run folder as a run leaves it (config, metrics, log, model/, checkpoints/), last changed ``days_idle`` ago."""
    run = work / "runs" / model / name
    (run / "model").mkdir(parents=True)
    for path, size in (("config.json", 10), ("metrics.json", 20), ("worker.log", 30), ("model/model.safetensors", 1000)):
        (run / path).write_bytes(b"x" * size)
    if checkpoints:
        (run / "checkpoints" / "step-0000010").mkdir(parents=True)
        (run / "checkpoints" / "step-0000010" / "model.safetensors").write_bytes(b"x" * 5000)
    stamp = NOW - days_idle * DAY
    for path in [run, *run.rglob("*")]:
        os.utime(path, (stamp, stamp))
    return run


@pytest.fixture
def work(tmp_path) -> Path:
    # reviews: five runs, newest first by name; other: one old run
    for i, days in enumerate([0.01, 2, 40, 50, 60]):
        fake_run(tmp_path, "reviews", f"2026120{5 - i}T000000Z-run{i}", days)
    fake_run(tmp_path, "other", "20260101T000000Z-old", 90, checkpoints=False)
    return tmp_path


def by_name(decisions) -> dict[str, tuple[str, str]]:
    return {d.path.name: (d.action, d.reason) for d in decisions}


def test_old_runs_beyond_the_newest_are_removed_and_the_rest_kept(work):
    decisions = gc_runs(work, older_than_days=30, keep_last=1, now=NOW)
    got = by_name(decisions)
    assert got["20261205T000000Z-run0"][1].startswith("in progress")  # changed 15 minutes ago
    assert got["20261204T000000Z-run1"] == ("keep", "younger than 30 days")
    for run in ("20261203T000000Z-run2", "20261202T000000Z-run3", "20261201T000000Z-run4"):
        assert got[run][0] == "remove"
    assert got["20260101T000000Z-old"] == ("keep", "one of the 1 newest of its model")
    assert sorted(p.name for p in (work / "runs" / "reviews").iterdir()) == ["20261204T000000Z-run1", "20261205T000000Z-run0"]
    removed = [d for d in decisions if d.action == "remove"]
    assert sum(d.size_bytes for d in removed) == 3 * 6060


def test_keep_last_protects_old_runs_too(work):
    got = by_name(gc_runs(work, older_than_days=30, keep_last=3, now=NOW))
    assert got["20261203T000000Z-run2"] == ("keep", "one of the 3 newest of its model")
    assert got["20261202T000000Z-run3"][0] == got["20261201T000000Z-run4"][0] == "remove"
    assert got["20260101T000000Z-old"] == ("keep", "one of the 3 newest of its model")


def test_dry_run_removes_nothing(work):
    before = sorted(work.rglob("*"))
    decisions = gc_runs(work, older_than_days=0, keep_last=0, dry_run=True, now=NOW)
    assert sum(d.action == "remove" for d in decisions) == 5  # all but the run in progress
    assert sorted(work.rglob("*")) == before


def test_checkpoints_only_keeps_the_model_and_metrics(work):
    decisions = gc_runs(work, older_than_days=30, keep_last=1, checkpoints_only=True, now=NOW)
    got = by_name(decisions)
    assert got["20261203T000000Z-run2"][0] == "remove checkpoints"
    assert got["20260101T000000Z-old"] == ("keep", "one of the 1 newest of its model")
    again = by_name(gc_runs(work, older_than_days=30, keep_last=0, checkpoints_only=True, model="other", now=NOW))
    assert again == {"20260101T000000Z-old": ("keep", "nothing to prune")}  # it has no checkpoints
    run = work / "runs" / "reviews" / "20261203T000000Z-run2"
    assert not (run / "checkpoints").exists() and (run / "model" / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    assert (work / "runs" / "reviews" / "20261204T000000Z-run1" / "checkpoints").is_dir()
    assert [d.size_bytes for d in decisions if d.path == run] == [5000]


def test_a_run_a_live_process_uses_is_never_touched(work):
    run = work / "runs" / "reviews" / "20261201T000000Z-run4"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(run / "run_spec.json")])
    try:
        got = by_name(gc_runs(work, older_than_days=0, keep_last=0, now=NOW))
    finally:
        holder.kill()
        holder.wait()
    assert got["20261201T000000Z-run4"] == ("keep", "in progress (a running process uses it)")
    assert run.is_dir() and not (work / "runs" / "reviews" / "20261202T000000Z-run3").exists()
    assert not (work / "runs" / "other").exists()  # a model left without runs goes too


def test_bad_options_and_unknown_model_are_named(work):
    with pytest.raises(ConfigError) as caught:
        gc_runs(work, older_than_days=-1, keep_last=-2, model="nope", now=NOW)
    text = str(caught.value)
    assert "--older-than" in text and "--keep-last" in text and "'nope'" in text and caught.value.exit_code == 2


def test_cli_lists_then_removes(work):
    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "adaptflow.flows.cli", "runs", "gc", "--work-dir", str(work), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})

    dry = cli("--older-than", "30", "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and "would free 18.2 kB from 3 run(s); kept 3" in dry.stdout
    assert len(list((work / "runs" / "reviews").iterdir())) == 5
    done = cli("--older-than", "30", "--keep-last", "1")
    assert done.returncode == 0, done.stderr
    assert "freed 18.2 kB from 3 run(s); kept 3" in done.stdout and (work / "runs" / "other").is_dir()
    bad = cli("--keep-last", "-1")
    assert bad.returncode == 2 and "--keep-last" in bad.stderr and "Traceback" not in bad.stderr
