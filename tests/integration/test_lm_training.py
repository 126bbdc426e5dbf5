"""Language-model runs through the one training engine, in the real worker process (no Prefect needed):
they resume from checkpoints, stop early and stop on the time limit like classification runs."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import psutil
import pytest

from adaptflow.tasks.config import load_config
from adaptflow.tasks.data.lm import prepare_lm_data
from adaptflow.tasks.errors import TrainingError
from adaptflow.tasks.training.launch import run_training

TERMS = ["patient", "dose", "tablet", "symptom", "clinic", "diagnosis", "therapy", "infection", "insulin", "ward"]


def _config(model: Path, data: Path, work: Path, **training):
    return load_config(
        {
            "model": str(model),
            "task": "causal_lm",
            "strategy": {"name": "full_fine_tuning"},
            "data": {"data": str(data), "max_length": 48},
            "training": {"batch_size": 4, "learning_rate": 5e-3, "log_every": 1, "mixed_precision": "no", **training},
            "lm": {"generation_samples": 1, "generation_max_new_tokens": 2},
            "work_dir": str(work),
        }
    )


@pytest.fixture
def sft_data(tmp_path) -> Path:
    path = tmp_path / "sft.jsonl"
    with path.open("w") as fh:
        for i in range(40):
            fh.write(json.dumps({"prompt": f"Which word goes with {i}? " + "and " * (i % 7), "response": f"{TERMS[i % 10]} {i}"}) + "\n")
    return path


def _train(model, data, tmp_path, run_dir, **training):
    cfg = _config(model, data, tmp_path / "work", **training)
    prepared = prepare_lm_data("sft", cfg.data, cfg.lm, model, tmp_path / "work", is_decoder=True)
    events: list[dict] = []
    metrics = run_training(cfg, prepared.path, model, run_dir, on_event=events.append)
    return metrics, events


def test_lm_run_resumes_from_its_checkpoint_like_an_uninterrupted_run(tiny_gpt2_dir, sft_data, tmp_path):
    run_dir = tmp_path / "run"
    training = {"max_steps": 4, "checkpoint_every": 2}
    whole, events = _train(tiny_gpt2_dir, sft_data, tmp_path, run_dir, **training)
    assert whole["steps"] == 4 and whole["resumed_from_step"] is None
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 4]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]

    shutil.rmtree(run_dir / "checkpoints" / "step-0000004")  # "crashed" after step 2's checkpoint
    (run_dir / "metrics.json").unlink()
    resumed, _ = _train(tiny_gpt2_dir, sft_data, tmp_path, run_dir, **training)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    assert resumed["examples_sha256"] == whole["examples_sha256"]  # the same examples, in the same order
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in whole["history"]], rel=1e-4)
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-4)
    assert (run_dir / "model" / "model.safetensors").is_file()

    (run_dir / "metrics.json").unlink()  # stopped after its final checkpoint, before the end: nothing left to train
    again, _ = _train(tiny_gpt2_dir, sft_data, tmp_path, run_dir, **training)
    assert again["resumed_from_step"] == 4 and again["steps"] == 4 and again["history"] == resumed["history"]


def test_lm_run_stops_early_and_on_its_time_limit(tiny_gpt2_dir, sft_data, tmp_path):
    # a rate too small to move the weights: the evaluation loss never improves after the first evaluation
    still, events = _train(
        tiny_gpt2_dir, sft_data, tmp_path, tmp_path / "still", max_steps=8, learning_rate=1e-12, eval_every=1, early_stopping_patience=1
    )
    assert still["stopped_early"] is True and still["steps"] == 2 and still["best_step"] == 1
    assert [e["step"] for e in still["evals"]] == [1, 2] and "accuracy" not in still["evals"][0]
    assert any("early stopping at step 2" in e.get("message", "") for e in events)

    timed, events = _train(tiny_gpt2_dir, sft_data, tmp_path, tmp_path / "timed", max_steps=50, time_limit_s=0.001)
    assert timed["stopped_by_time"] is True and timed["steps"] == 1
    assert any(e.get("message", "").startswith("time limit: stopping at step 1") for e in events)
    assert (tmp_path / "timed" / "model" / "model.safetensors").is_file() and (tmp_path / "timed" / "generations.json").is_file()


def test_lm_worker_killed_mid_run_resumes_and_matches_an_uninterrupted_run(tiny_gpt2_dir, sft_data, tmp_path):
    """A real crash, not a removed checkpoint: the worker is SIGKILLed after a checkpoint; the
    next attempt in the same run folder resumes there and ends where an uninterrupted run ends."""
    training = {"max_steps": 40, "checkpoint_every": 4}
    run_dir = tmp_path / "killed"
    outcome: dict = {}

    def first_attempt() -> None:
        try:
            outcome["metrics"] = _train(tiny_gpt2_dir, sft_data, tmp_path, run_dir, **training)[0]
        except TrainingError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=first_attempt)
    thread.start()
    deadline = time.monotonic() + 180
    while not list(run_dir.glob("checkpoints/step-*/loop_state.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "adaptflow.tasks.training.worker" in (p.info["cmdline"] or []) and str(run_dir) in " ".join(p.info["cmdline"])
    ]
    assert workers, "the worker finished before it could be killed"
    for worker in workers:
        worker.kill()
    thread.join(120)
    assert "error" in outcome and "metrics" not in outcome  # the attempt failed, as a crashed worker does
    killed_at = max(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoints/step-*") if (p / "loop_state.json").is_file())

    resumed, _ = _train(tiny_gpt2_dir, sft_data, tmp_path, run_dir, **training)
    whole, _ = _train(tiny_gpt2_dir, sft_data, tmp_path, tmp_path / "whole", **training)
    assert resumed["resumed_from_step"] == killed_at and 4 <= killed_at < 40 and resumed["steps"] == 40
    assert resumed["examples_sha256"] == whole["examples_sha256"]
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-4)
    after = [h["train_loss"] for h in resumed["history"] if h["step"] > killed_at]
    assert after == pytest.approx([h["train_loss"] for h in whole["history"] if h["step"] > killed_at], rel=1e-4)
