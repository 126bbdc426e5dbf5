"""Training options, run through the real worker process (no Prefect needed)."""

from __future__ import annotations

import json
import math

import pytest

from adaptflow.tasks.config import load_config
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.errors import TrainingError
from adaptflow.tasks.training.launch import run_training


@pytest.fixture
def prepared(tiny_bert_dir, reviews_csv, tmp_path):
    cfg = load_config({"data": {"data": str(reviews_csv), "max_length": 32}})
    return prepare_data(cfg.data, tiny_bert_dir, tmp_path / "work")


def _train(tiny_bert_dir, prepared, run_dir, **sections):
    cfg = load_config({"model": str(tiny_bert_dir), "data": {"max_length": 32}, **sections})
    events = []
    metrics = run_training(cfg, prepared.path, tiny_bert_dir, run_dir, on_event=events.append)
    return metrics, events


def test_accumulation_schedule_checkpoints_bf16_and_periodic_eval(tiny_bert_dir, prepared, tmp_path):
    run_dir = tmp_path / "run"
    metrics, events = _train(
        tiny_bert_dir,
        prepared,
        run_dir,
        strategy={"name": "full_fine_tuning"},
        training={
            "epochs": 2,
            "batch_size": 8,
            "gradient_accumulation_steps": 2,
            "scheduler": "cosine",
            "warmup_ratio": 0.2,
            "mixed_precision": "bf16",
            "eval_every": 3,
            "checkpoint_every": 2,
            "log_every": 1,
            "learning_rate": 1e-3,
        },
    )
    batches_per_epoch = math.ceil(prepared.manifest["splits"]["train"] / 8)
    assert metrics["steps"] == 2 * math.ceil(batches_per_epoch / 2)
    assert metrics["mixed_precision"] == "bf16"
    assert [e["step"] for e in metrics["evals"]] == list(range(3, metrics["steps"] + 1, 3))
    lrs = [h["learning_rate"] for h in metrics["history"]]
    assert max(lrs) == pytest.approx(1e-3, rel=0.05) and lrs[-1] < 0.05 * max(lrs)  # warm-up then cosine decay
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 2  # only the last two are kept
    state = json.loads((checkpoints[-1] / "loop_state.json").read_text())
    assert state["step"] == max(s for s in range(2, metrics["steps"] + 1, 2))
    assert any(f.name.startswith("optimizer") for f in checkpoints[-1].iterdir())
    kinds = [e["type"] for e in events if e["type"] != "log"]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds and "eval" in kinds


def test_gradient_checkpointing_trains_the_same_model(tiny_bert_dir, prepared, tmp_path):
    training = {"max_steps": 3, "batch_size": 8, "learning_rate": 1e-3, "mixed_precision": "no", "log_every": 1}
    plain, _ = _train(tiny_bert_dir, prepared, tmp_path / "plain", strategy={"name": "lora"}, training=training)
    recomputed, events = _train(
        tiny_bert_dir, prepared, tmp_path / "ckpt", strategy={"name": "lora"}, training={**training, "gradient_checkpointing": True}
    )
    assert recomputed["gradient_checkpointing"] is True
    assert any("gradient checkpointing on" in e.get("message", "") for e in events)
    # recomputing activations changes memory and time, never the arithmetic
    assert [h["train_loss"] for h in recomputed["history"]] == pytest.approx([h["train_loss"] for h in plain["history"]], rel=1e-5)
    assert recomputed["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)


def test_early_stopping_stops_and_restores_the_best_weights(tiny_bert_dir, prepared, tmp_path):
    metrics, _ = _train(
        tiny_bert_dir,
        prepared,
        tmp_path / "run",
        strategy={"name": "full_fine_tuning"},
        training={"epochs": 20, "batch_size": 8, "learning_rate": 0.05, "eval_every": 2, "early_stopping_patience": 2},
    )
    assert metrics["stopped_early"] is True
    steps = [e["step"] for e in metrics["evals"]]
    best = steps.index(metrics["best_step"])
    assert len(steps) == best + 1 + 2  # stopped after `patience` evaluations without improvement
    best_loss = metrics["evals"][best]["eval_loss"]
    assert all(e["eval_loss"] > best_loss - 1e-6 for e in metrics["evals"][best + 1 :])
    # the saved model is the best one, not the last: its final evaluation loss is the best loss
    assert metrics["eval_loss"] == pytest.approx(best_loss, rel=1e-3)


def test_transfer_learning_caches_backbone_features(tiny_bert_dir, prepared, tmp_path):
    first, _ = _train(tiny_bert_dir, prepared, tmp_path / "a", strategy={"name": "transfer_learning", "head_epochs": 2})
    cached = list((prepared.path / "features").glob("*.safetensors"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    second, _ = _train(tiny_bert_dir, prepared, tmp_path / "b", strategy={"name": "transfer_learning", "head_epochs": 2})
    assert cached[0].stat().st_mtime_ns == mtime  # read, not recomputed
    assert second["eval_accuracy"] == pytest.approx(first["eval_accuracy"])


def test_a_crashing_worker_is_reported_with_its_log(tiny_bert_dir, prepared, tmp_path):
    run_dir = tmp_path / "run"
    (prepared.path / "dataset").rename(prepared.path / "moved")
    with pytest.raises(TrainingError) as info:
        _train(tiny_bert_dir, prepared, run_dir, strategy={"name": "full_fine_tuning"}, training={"max_steps": 1})
    assert "worker.log" in str(info.value) and (run_dir / "worker.log").is_file()


def test_checkpoints_mirrored_to_s3_restore_on_a_machine_without_them(tiny_bert_dir, prepared, tmp_path, s3_env):
    import shutil

    from adaptflow.tasks.storage.s3 import iter_objects
    from adaptflow.tasks.training.checkpoints import CheckpointMirror

    uri = s3_env.uri(s3_env.key("checkpoints", "run-1"))
    training = {"batch_size": 8, "checkpoint_every": 2, "learning_rate": 1e-3, "checkpoint_uri": uri}
    cfg = load_config(
        {
            "model": str(tiny_bert_dir),
            "data": {"max_length": 32},
            "strategy": {"name": "full_fine_tuning"},
            "training": {**training, "max_steps": 6},
        }
    )
    run_dir = tmp_path / "run"
    run_training(cfg, prepared.path, tiny_bert_dir, run_dir, mirror=CheckpointMirror(s3_env, uri))
    keys = [o["Key"] for o in iter_objects(s3_env, s3_env.bucket, s3_env.key("checkpoints", "run-1") + "/")]
    mirrored = {k.split("/")[-2] for k in keys}
    # the newest always arrives; an older one may be skipped when the worker rotated it away first
    assert "step-0000006" in mirrored and mirrored <= {"step-0000004", "step-0000006"}
    assert all(any(k.endswith(f"{step}/loop_state.json") for k in keys) for step in mirrored)

    shutil.rmtree(run_dir / "checkpoints")  # "another machine": nothing local
    longer = load_config({**cfg.model_dump(), "training": {**cfg.training.model_dump(), "max_steps": 8}})
    lines: list[str] = []
    metrics = run_training(longer, prepared.path, tiny_bert_dir, run_dir, on_line=lines.append, mirror=CheckpointMirror(s3_env, uri))
    assert any("restored checkpoint step-0000006" in line for line in lines)
    assert metrics["resumed_from_step"] == 6 and metrics["steps"] == 8


def test_a_checkpoint_rotated_away_during_its_upload_leaves_nothing_behind(tmp_path, s3_env, monkeypatch):
    import shutil

    import adaptflow.tasks.training.checkpoints as checkpoints
    from adaptflow.tasks.storage.s3 import iter_objects

    uri = s3_env.uri(s3_env.key("checkpoints", "rotated"))
    folder = tmp_path / "step-0000002"
    folder.mkdir()
    for name in ("model.safetensors", "optimizer.bin", "loop_state.json"):
        (folder / name).write_text(name)
    real_upload = checkpoints.upload_file

    def upload_then_rotate(settings, path, uri, client):  # the worker deletes the folder mid-upload
        real_upload(settings, path, uri, client)
        shutil.rmtree(folder, ignore_errors=True)

    monkeypatch.setattr(checkpoints, "upload_file", upload_then_rotate)
    mirror = checkpoints.CheckpointMirror(s3_env, uri)
    assert mirror.upload(folder) is None
    assert list(iter_objects(s3_env, s3_env.bucket, s3_env.key("checkpoints", "rotated") + "/")) == []
    assert mirror.upload(tmp_path / "step-0000004") is None  # already gone before the upload began
