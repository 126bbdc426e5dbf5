"""The compare flow end to end on a tiny model: real Prefect API, real training processes, real files."""

from __future__ import annotations

import json
import shutil

import pytest
from datasets import load_from_disk
from prefect import flow

from adaptflow.flows.compare import compare, search
from adaptflow.tasks.config import Lora
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.evaluation.compare import with_budget
from adaptflow.tasks.evaluation.compare_config import load_compare_config
from tests.integration.prefect_rest import rest_json
from tests.integration.test_pipeline import artifact_keys

pytestmark = pytest.mark.usefixtures("prefect_api")


def _compare_config(model_dir, data, work_dir, **extra) -> dict:
    return {
        "model": str(model_dir),
        "data": {"data": str(data), "max_length": 32, "validation_fraction": 0.2},
        "training": {"batch_size": 8, "log_every": 2},
        "work_dir": str(work_dir),
        **extra,
    }


def test_compare_same_backbone_examples_report_curves_and_artifacts(tiny_bert_dir, reviews_csv, tmp_path, prefect_api):
    raw = _compare_config(
        tiny_bert_dir,
        reviews_csv,
        tmp_path / "work",
        strategies=[
            {"name": "transfer_learning", "pooling": "mean", "head_epochs": 6},
            {"name": "partial_fine_tuning", "last_n_layers": 1},
            {"name": "lora", "lora_r": 2},
        ],
        budget_passes=1,
        max_train_seconds=3600,
    )
    report = compare(config=load_compare_config(raw))

    out = tmp_path / "work" / "compare"
    (folder,) = list(out.iterdir())
    saved = json.loads((folder / "compare_report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    for image in ("quality_vs_cost.png", "learning_curves.png"):
        assert (folder / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (folder / "report.md").read_text()
    assert "## Recommendation" in markdown and "![learning curves](learning_curves.png)" in markdown

    train_rows = report["splits"]["train"]
    rows = {r["strategy"]: r for r in report["rows"]}
    # the budget rule: every strategy pushed the same examples through its backbone (one pass here). The workers
    # recorded the ids of what they trained on, batch by batch: the fine-tuning strategies saw the same examples in
    # the same order; transfer learning's backbone ran once over the training rows and its head took its 6 passes.
    assert report["budget"]["backbone_examples"] == train_rows
    assert {r["backbone_examples"] for r in rows.values()} == {train_rows}
    assert rows["partial_fine_tuning"]["examples_seen"] == rows["lora"]["examples_seen"] == train_rows
    assert len(rows["lora"]["examples_sha256"]) == 64
    assert rows["partial_fine_tuning"]["examples_sha256"] == rows["lora"]["examples_sha256"]
    assert rows["transfer_learning"]["examples_seen"] == 6 * train_rows
    assert "head passes over the cached features" in report["budget"]["description"]
    # transfer learning leaves the backbone alone; LoRA moves it
    assert abs(rows["transfer_learning"]["forgetting"]) < 1e-6 < rows["lora"]["forgetting"]
    best = report["recommendation"]["best_quality"]
    for name, r in rows.items():
        assert 0 <= r["accuracy"] <= 1 and r["train_runtime_s"] > 0 and r["peak_memory_mb"] > 0 and r["artifact_mb"] > 0
        assert r["pareto_train_runtime_s"] in (True, False)
        for key in ("accuracy", "macro_f1"):  # the interval holds the point estimate
            lo, hi = r[f"{key}_ci"]
            assert lo <= r[key] <= hi and hi - lo > 0
        if name == best:
            assert r["paired"] is None
        else:  # McNemar against the best on the same evaluation rows
            assert r["paired"]["against"] == best and 0 < r["paired"]["p_value"] <= 1
        # learning curves: several validation evaluations, examples and seconds growing
        curve = report["curves"][name]
        assert len(curve) >= 3
        assert [p["examples"] for p in curve] == sorted({p["examples"] for p in curve})
        assert all(b["seconds"] >= a["seconds"] for a, b in zip(curve, curve[1:]))
    assert report["curve_findings"]
    assert rows["lora"]["artifact_mb"] < rows["transfer_learning"]["artifact_mb"]  # adapter only vs whole backbone

    assert report["search"] == {} and rows["lora"]["hyperparameters"] == f"lr {Lora.default_learning_rate:g}, r 2"  # no search: defaults
    assert report["recommendation"]["within_budget"] in rows

    keys = artifact_keys(prefect_api, saved["flow_run_id"])
    assert {"compare-table", "compare-report"} <= keys
    shown = rest_json(prefect_api, "GET", "/artifacts/compare-report/latest")["data"]
    assert "![quality against cost](data:image/png;base64," in shown  # the UI renders the charts inline
    assert "![learning curves](data:image/png;base64," in shown


def test_search_never_reads_the_evaluation_split(tiny_bert_dir, reviews_csv, tmp_path):
    cc = load_compare_config(
        _compare_config(tiny_bert_dir, reviews_csv, tmp_path / "work", strategies=[{"name": "transfer_learning"}], search_lr_factors=[1, 4])
    )
    prepared = prepare_data(cc.data, tiny_bert_dir, tmp_path / "work")
    eval_texts = set(load_from_disk(str(prepared.dataset_path / "eval"))["text"])
    validation_texts = load_from_disk(str(prepared.dataset_path / "validation"))["text"]
    # Take the evaluation split away: any read of it during the search fails.
    shutil.move(prepared.dataset_path / "eval", tmp_path / "eval-hidden")
    plans = [with_budget(c, cc, prepared.manifest["splits"]["train"]) for c in cc.adapt_configs()]

    @flow
    def search_only():
        return search(cc, plans, prepared.path, tiny_bert_dir, tmp_path / "out")

    result = search_only()["transfer_learning"]
    assert len(result["trials"]) == 2 and result["winner"] in result["trials"]
    assert result["winner"]["validation_loss"] == min(t["validation_loss"] for t in result["trials"])
    for trial in result["trials"]:
        predictions = json.loads((tmp_path / trial["run_dir"] / "predictions.json").read_text())
        assert len(predictions["labels"]) == len(validation_texts)  # what the trial was scored on: the validation rows
    view = load_from_disk(str(tmp_path / "out" / "search_data" / prepared.dataset_path.name / "eval"))
    assert sorted(view["text"]) == sorted(validation_texts) and not eval_texts & set(view["text"])
