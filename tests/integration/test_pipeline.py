"""The adapt pipeline end to end: real Prefect API, real SeaweedFS, real training processes."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from adaptflow.flows import strategies
from adaptflow.flows.adapt import adapt
from adaptflow.tasks.config import load_config
from adaptflow.tasks.registry.hf_folder import load_hf_classifier
from adaptflow.tasks.registry.store import get_manifest, list_versions, pull_version
from tests.integration.conftest import tiny_config
from tests.integration.prefect_rest import filter_all

pytestmark = pytest.mark.usefixtures("prefect_api")


def artifact_keys(api_url: str, flow_run_id: str) -> set[str]:
    """Keys (or types, for unkeyed ones) of the artifacts a flow run published, read over the REST API."""
    return {a["key"] or a["type"] for a in filter_all(api_url, "artifacts", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})}


def test_adapt_prepares_trains_evaluates_and_registers(s3_env, tiny_bert_dir, reviews_csv, tmp_path, prefect_api):
    cfg = load_config(tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work", registry={"model_name": "reviews-e2e"}))
    summary = adapt(config=cfg)

    # the run folder holds everything a person or the registry needs
    run_dir = tmp_path / "work" / "runs" / "reviews-e2e"
    (run,) = list(run_dir.iterdir())
    for name in (
        "config.json",
        "metrics.json",
        "predictions.json",
        "evaluation.json",
        "worker.log",
        "plots/loss_curves.png",
        "plots/confusion_matrix.png",
        "model/head.safetensors",
        "model/backbone/model.safetensors",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["trainable_params"] > 0.99 * metrics["total_params"]
    assert metrics["history"] and metrics["history"][-1]["step"] == 6

    # exactly one committed version, with its manifest, model files and card
    (version,) = list_versions(s3_env, "reviews-e2e")
    assert summary["version"] == version.version == 1 and summary["version_uri"] == version.uri
    manifest = get_manifest(s3_env, "reviews-e2e", 1)
    files = {f["path"] for f in manifest["files"]}
    assert {
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
        "README.md",
        "adaptflow/model.json",
        "adaptflow/config.json",
        "adaptflow/metrics.json",
        "adaptflow/evaluation.json",
        "adaptflow/data_manifest.json",
        "adaptflow/plots/confusion_matrix.png",
    } <= files
    assert manifest["strategy"] == "full_fine_tuning" and manifest["folder_layout"] == 2
    assert manifest["config"]["model"] == str(tiny_bert_dir)
    assert len(manifest["base_model"]["sha256"]) == 64
    assert manifest["data"]["key"] and manifest["data"]["source"]["data"]["sha256"]
    assert manifest["prefect"]["flow_run_id"]
    assert set(manifest["package_versions"]) >= {"torch", "transformers", "peft", "accelerate", "datasets", "prefect"}
    assert manifest["code_version"]
    assert s3_env.secret_access_key not in json.dumps(manifest)

    # the card is a Hugging Face README with front matter, and the pulled model predicts what the run measured
    pulled = pull_version(s3_env, "reviews-e2e", 1, tmp_path / "pulled")
    card = (pulled / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == str(tiny_bert_dir) and "full-fine-tuning" in front["tags"]
    assert "## Intended use" in card and "## Limitations" in card
    model, tokenizer, meta = load_hf_classifier(pulled)
    predictions = json.loads((run / "predictions.json").read_text())
    eval_rows = summary_eval_texts(summary)
    batch = tokenizer(eval_rows[:8], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        _, logits = model(**batch)
    assert logits.argmax(-1).tolist() == predictions["predictions"][:8]
    assert meta["label_names"] == ["negative", "positive"]

    # Prefect saw the progress, the evaluation and the summary
    keys = artifact_keys(prefect_api, manifest["prefect"]["flow_run_id"])
    assert {"data-report", "evaluation", "per-class-metrics", "adapt-summary", "progress"} <= keys


def summary_eval_texts(summary: dict) -> list[str]:
    import datasets

    return datasets.load_from_disk(summary["prepared_data"] + "/dataset")["eval"]["text"]


@pytest.mark.parametrize(
    "flow_fn, strategy, expected_files, absent",
    [
        (
            strategies.transfer_learning,
            {"name": "transfer_learning", "head_epochs": 2},
            {"model.safetensors.index.json", "config.json"},
            set(),
        ),
        (strategies.partial_fine_tuning, {"name": "partial_fine_tuning", "last_n_layers": 1}, {"model-00001-of-00002.safetensors"}, set()),
        (
            strategies.lora,
            {"name": "lora", "lora_r": 2},
            {"adapter_model.safetensors", "adapter_config.json"},
            {"model-00001-of-00002.safetensors", "adapter/adapter_model.safetensors"},
        ),
    ],
    ids=["transfer_learning", "partial_fine_tuning", "lora"],
)
def test_each_strategy_flow_registers_its_artifact(s3_env, tiny_bert_dir, reviews_csv, tmp_path, flow_fn, strategy, expected_files, absent):
    cfg = load_config(tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work", strategy=strategy))
    summary = flow_fn(
        model=cfg.model, strategy=cfg.strategy, data=cfg.data, training=cfg.training, registry=cfg.registry, work_dir=cfg.work_dir
    )
    assert summary["strategy"] == strategy["name"]
    manifest = get_manifest(s3_env, cfg.model_name(), summary["version"])
    files = {f["path"] for f in manifest["files"]}
    assert expected_files <= files and not (absent & files)
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    if strategy["name"] == "lora":
        pulled = pull_version(s3_env, cfg.model_name(), summary["version"], tmp_path / "pulled")
        model, _, meta = load_hf_classifier(pulled, base_model_dir=tiny_bert_dir)
        assert meta["weights"] == "adapter" and hasattr(model.backbone, "peft_config")


def test_same_input_reuses_prepared_data(s3_env, tiny_bert_dir, reviews_csv, tmp_path):
    raw = tiny_config(
        tiny_bert_dir,
        reviews_csv,
        tmp_path / "work",
        strategy={"name": "transfer_learning", "head_epochs": 1},
        registry={"register_model": False},
    )
    first = adapt(config=load_config(raw))
    second = adapt(config=load_config(raw))
    assert first["data_reused"] is False and second["data_reused"] is True
    assert first["prepared_data"] == second["prepared_data"]
    assert second["version_uri"] is None


def test_two_processes_register_exactly_one_version(s3_env, tiny_bert_dir, reviews_csv, tmp_path):
    cfg = load_config(
        tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work", launch={"num_processes": 2}, registry={"model_name": "two-procs"})
    )
    summary = adapt(config=cfg)
    assert [v.version for v in list_versions(s3_env, "two-procs")] == [1]
    run_dir = summary["run_dir"]
    metrics = json.loads(open(f"{run_dir}/metrics.json").read())
    assert metrics["num_processes"] == 2
    # global batch of 2 x 8 per step: twice the examples of one process
    assert metrics["examples_seen"] == 6 * 2 * 8


def test_data_and_model_can_come_from_s3(s3_env, tiny_bert_dir, reviews_csv, tmp_path):
    from adaptflow.tasks.storage.s3 import upload_file

    data_uri = s3_env.uri(s3_env.key("inputs", "reviews.csv"))
    upload_file(s3_env, reviews_csv, data_uri)
    model_prefix = s3_env.uri(s3_env.key("inputs", "tiny-bert"))
    for f in tiny_bert_dir.iterdir():
        upload_file(s3_env, f, f"{model_prefix}/{f.name}")
    raw = tiny_config(
        tiny_bert_dir,
        reviews_csv,
        tmp_path / "work",
        strategy={"name": "transfer_learning", "head_epochs": 1},
        registry={"model_name": "from-s3"},
    )
    raw["model"] = model_prefix
    raw["data"]["data"] = data_uri
    summary = adapt(config=load_config(raw))
    manifest = get_manifest(s3_env, "from-s3", summary["version"])
    assert manifest["config"]["model"] == model_prefix
    assert manifest["data"]["source"]["data"]["uri"] == data_uri
    assert manifest["data"]["source"]["data"]["sha256"] == __import__("hashlib").sha256(reviews_csv.read_bytes()).hexdigest()
