"""Batch inference from registered versions: the predict flow, the CLI, bad inputs.

Two versions come from real adapt runs (full fine-tuning and LoRA on a tiny BERT), so the
predictions can be checked against what each run measured on its evaluation split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from adaptflow.flows.adapt import adapt
from adaptflow.flows.predict import predict
from adaptflow.tasks.config import load_config
from adaptflow.tasks.errors import AdaptFlowError, DataError, ModelError
from adaptflow.tasks.inference.predict import predict_file
from tests.integration.conftest import tiny_config, write_reviews
from tests.integration.prefect_rest import filter_all
from tests.integration.versions import fit_head, register_head, stack_env, write_labelled
from tests.model_fixtures import build_tiny_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry(s3_stack, prefect_api, tiny_bert_dir, tmp_path_factory):
    """Settings (exported to the environment) of a prefix holding two versions made by the adapt flow."""
    work = tmp_path_factory.mktemp("predict")
    with stack_env(s3_stack, "predict", work / "home") as settings:
        data = write_reviews(work / "reviews.csv")
        runs = {}
        for name, strategy in (("pred-full", {"name": "full_fine_tuning"}), ("pred-lora", {"name": "lora", "lora_r": 2})):
            cfg = load_config(tiny_config(tiny_bert_dir, data, work / "work", strategy=strategy, registry={"model_name": name}))
            runs[name] = adapt(config=cfg)
        yield settings, runs, work


def eval_split(summary: dict, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """The run's evaluation texts as a CSV without labels, and the labels the run predicted for them."""
    texts = datasets.load_from_disk(summary["prepared_data"] + "/dataset")["eval"]["text"]
    measured = json.loads((Path(summary["run_dir"]) / "predictions.json").read_text())
    predicted = [measured["label_names"][i] for i in measured["predictions"]]
    path = tmp_path / "unlabelled.csv"
    pd.DataFrame({"id": range(len(texts)), "review": texts}).to_csv(path, index=False)
    return path, list(texts), predicted


def flow_run_artifacts(api_url: str, flow_run_id: str) -> dict[str, dict]:
    return {a["key"] or a["type"]: a for a in filter_all(api_url, "artifacts", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})}


def test_predict_flow_on_a_full_version_repeats_the_runs_predictions(registry, prefect_api, tmp_path):
    settings, runs, _ = registry
    data, texts, expected = eval_split(runs["pred-full"], tmp_path)
    state = predict(
        model="pred-full", data=str(data), output=str(tmp_path / "out.csv"), text_column="review", batch_size=5, return_state=True
    )
    summary = state.result()

    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["id", "review", "label", "score", "prob_negative", "prob_positive"]
    assert len(out) == len(texts) == summary["rows"] and out["review"].tolist() == texts
    assert out["label"].tolist() == expected
    probs = out[["prob_negative", "prob_positive"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(out["score"], probs.max(axis=1))
    assert summary["model"] == "pred-full:1" and sum(summary["label_counts"].values()) == len(texts)

    artifacts = flow_run_artifacts(prefect_api, str(state.state_details.flow_run_id))
    assert {"predictions-preview", "predictions-summary", "progress"} <= set(artifacts)
    assert "| positive |" in artifacts["predictions-summary"]["data"]
    assert artifacts["progress"]["data"] == 100.0


def test_predict_a_lora_version_as_json_lines(registry, tmp_path):
    settings, runs, _ = registry
    data, texts, expected = eval_split(runs["pred-lora"], tmp_path)
    seen = []
    result = predict_file(
        settings, "pred-lora:1", str(data), tmp_path / "out.jsonl", batch_size=4, on_progress=lambda done, total: seen.append((done, total))
    )
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["review"] for r in rows] == texts and [r["label"] for r in rows] == expected
    assert all(abs(r["prob_negative"] + r["prob_positive"] - 1) < 1e-6 for r in rows)
    assert result.text_column == "review" and result.rows == len(texts)
    assert seen[-1] == (len(texts), len(texts)) and len(seen) == -(-len(texts) // 4)


def test_lora_version_refuses_a_changed_base_model(registry, tmp_path):
    settings, _, work = registry
    base = build_tiny_model(tmp_path / "base")
    rows = [("the film was great", "positive"), ("the film was awful", "negative")]
    version = register_head(settings, "pred-lora-drift", base, tmp_path, *fit_head(base, rows), lora=True)
    data = write_labelled(tmp_path / "in.csv", rows)
    predict_file(settings, f"pred-lora-drift:{version}", str(data), tmp_path / "ok.csv")  # the base as registered works

    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))
    with pytest.raises(ModelError) as caught:
        predict_file(settings, f"pred-lora-drift:{version}", str(data), tmp_path / "drift.csv")
    message = str(caught.value)
    assert "LoRA adapter trained on base model" in message and str(base) in message and "different weights" in message
    assert not (tmp_path / "drift.csv").exists()


def test_input_problems_are_reported_together_before_loading(registry, tmp_path):
    settings, _, _ = registry
    numbers = tmp_path / "numbers.csv"
    pd.DataFrame({"id": [1, 2], "value": [0.5, 0.7]}).to_csv(numbers, index=False)
    with pytest.raises(DataError) as caught:
        predict_file(settings, "pred-full", str(numbers), tmp_path / "out.csv")
    assert "no text column found (columns: id, value)" in str(caught.value) and "--text-column" in str(caught.value)

    with pytest.raises(AdaptFlowError) as caught:
        predict_file(settings, "pred-full", str(tmp_path / "missing.csv"), tmp_path / "out.xlsx", batch_size=0)
    assert len(caught.value.problems) == 3
    for needle in ("missing.csv: no such file", "unsupported output file type", "batch_size: must be 1 or more"):
        assert needle in str(caught.value)
    assert not any(tmp_path.glob("out.*"))


def cli(args: list[str], api_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api_url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "adaptflow.flows.cli", "predict", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_predicts_a_file(registry, prefect_api, tmp_path):
    _, runs, _ = registry
    data, texts, expected = eval_split(runs["pred-full"], tmp_path)
    done = cli(
        [
            "--model",
            "pred-full:1",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "out.csv"),
            "--text-column",
            "review",
            "--batch-size",
            "8",
        ],
        prefect_api,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == expected
    assert f"{len(texts)} rows predicted with pred-full:1" in done.stdout


@pytest.mark.parametrize(
    "model, data, needles",
    [
        ("no-such-model", "reviews", ["no-such-model"]),
        ("pred-full", "numbers", ["no text column found", "--text-column"]),
        ("../pred-full", "reviews", ["../pred-full", "name"]),
    ],
    ids=["missing-model", "no-text-column", "bad-name"],
)
def test_cli_errors_are_one_clear_message(registry, prefect_api, tmp_path, model, data, needles):
    inputs = {
        "reviews": write_labelled(tmp_path / "reviews.csv", [("the film was great", "positive")]),
        "numbers": tmp_path / "numbers.csv",
    }
    pd.DataFrame({"id": [1, 2], "value": [0.5, 0.7]}).to_csv(inputs["numbers"], index=False)
    done = cli(["--model", model, "--data", str(inputs[data]), "--output", str(tmp_path / "out.csv")], prefect_api, tmp_path)
    assert done.returncode not in (0, 1), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Error:" in done.stderr
    assert all(needle in done.stderr for needle in needles), done.stderr[-3000:]
    assert not (tmp_path / "out.csv").exists()


def test_predict_reads_parquet_and_keeps_a_label_column(registry, tmp_path):
    settings, runs, _ = registry
    _, texts, expected = eval_split(runs["pred-full"], tmp_path)
    data = tmp_path / "labelled.parquet"
    pd.DataFrame({"text": texts, "label": ["?"] * len(texts)}).to_parquet(data)
    result = predict_file(settings, "pred-full", str(data), tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv")
    assert result.text_column == "text"
    assert out["input_label"].tolist() == ["?"] * len(texts) and out["label"].tolist() == expected


def _unlabelled(texts: list[str], path: Path) -> Path:
    pd.DataFrame({"id": range(len(texts)), "review": texts}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("output_name", ["out.csv", "out.jsonl"])
def test_streaming_in_small_chunks_writes_what_one_chunk_writes(registry, tmp_path, output_name):
    settings, runs, _ = registry
    _, texts, expected = eval_split(runs["pred-full"], tmp_path)
    many = texts * 3  # 3x the rows: several chunks of 7, and the last one short
    data = _unlabelled(many, tmp_path / "many.csv")
    whole = predict_file(settings, "pred-full", str(data), tmp_path / "whole" / output_name, text_column="review", batch_size=4)
    chunked = predict_file(
        settings, "pred-full", str(data), tmp_path / "chunked" / output_name, text_column="review", batch_size=4, chunk_rows=7
    )
    read = pd.read_csv if output_name.endswith(".csv") else (lambda p: pd.read_json(p, lines=True))
    a, b = read(tmp_path / "whole" / output_name), read(tmp_path / "chunked" / output_name)
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == len(many) == chunked.rows
    assert b["id"].tolist() == list(range(len(many))) and b["review"].tolist() == many  # row order kept across chunks
    assert a["label"].tolist() == b["label"].tolist() == expected * 3
    probs = [c for c in a.columns if c.startswith("prob_")]
    assert np.allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-6)  # padding per batch differs, nothing else
    assert whole.label_counts == chunked.label_counts and whole.preview == chunked.preview


def test_predict_reads_gzip_input_like_the_plain_file(registry, tmp_path):
    import gzip

    settings, runs, _ = registry
    _, texts, expected = eval_split(runs["pred-full"], tmp_path)
    plain = _unlabelled(texts, tmp_path / "in.csv")
    packed = tmp_path / "in.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    predict_file(settings, "pred-full", str(packed), tmp_path / "out.csv", chunk_rows=5)
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == expected


def test_output_gets_the_umask_permissions_and_a_failed_run_leaves_no_temp_file(registry, tmp_path, monkeypatch):
    from adaptflow.tasks.inference import predict as predict_module

    settings, runs, _ = registry
    _, texts, _ = eval_split(runs["pred-full"], tmp_path)
    data = _unlabelled(texts, tmp_path / "in.csv")
    out_dir = tmp_path / "out"
    old = os.umask(0o022)
    try:
        predict_file(settings, "pred-full", str(data), out_dir / "ok.csv")
    finally:
        os.umask(old)
    assert (out_dir / "ok.csv").stat().st_mode & 0o777 == 0o644

    real, calls = predict_module.prediction_frame, []

    def fail_on_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise DataError("the disk is full")  # any failure after a chunk was written
        return real(*args)

    monkeypatch.setattr(predict_module, "prediction_frame", fail_on_the_second_chunk)
    with pytest.raises(DataError):
        predict_file(settings, "pred-full", str(data), out_dir / "failed.csv", chunk_rows=3)
    assert len(calls) == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["ok.csv"]  # no failed.csv, no temporary file


def test_output_folder_is_refused_before_the_model_loads(registry, tmp_path):
    settings, runs, _ = registry
    _, texts, _ = eval_split(runs["pred-full"], tmp_path)
    data = _unlabelled(texts, tmp_path / "in.csv")
    folder = tmp_path / "preds.csv"
    folder.mkdir()
    with pytest.raises(AdaptFlowError) as caught:  # with a model that does not exist: both are reported, nothing was loaded
        predict_file(settings, "no-such-model", str(data), folder)
    assert len(caught.value.problems) == 2 and "is a folder" in str(caught.value) and "no-such-model" in str(caught.value)


def test_cli_output_folder_exits_2_before_inference(registry, prefect_api, tmp_path):
    _, runs, _ = registry
    _, texts, _ = eval_split(runs["pred-full"], tmp_path)
    data = _unlabelled(texts, tmp_path / "in.csv")
    before = sorted(tmp_path.iterdir())
    done = cli(["--model", "pred-full:1", "--data", str(data), "--output", str(tmp_path)], prefect_api, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "is a folder" in done.stderr and "Traceback" not in done.stderr
    assert "rows predicted" not in done.stdout
    assert sorted(tmp_path.iterdir()) == before  # nothing written
