"""Plots as images inside markdown artifacts: ``data:image/png`` URIs, small enough to store on every run."""

from __future__ import annotations

import base64
import io

from PIL import Image

from adaptflow.tasks.evaluation.classification import (
    plot_confusion_matrix,
    plot_loss_curves,
    plots_markdown,
    png_data_uri,
)
from adaptflow.tasks.evaluation.compare import plot_quality_vs_cost, recommend
from adaptflow.tasks.evaluation.compare_config import CHART_FILE
from adaptflow.tasks.evaluation.compare_report import report_markdown

PREFIX = "data:image/png;base64,"


def _decoded(uri: str) -> Image.Image:
    assert uri.startswith(PREFIX)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(PREFIX) :])))


def test_plots_become_small_inline_pngs(tmp_path):
    history = [{"step": s, "train_loss": 2.0 / s + 0.01 * (s % 7)} for s in range(1, 501)]
    evals = [{"step": s, "eval_loss": 1.0 / s**0.5} for s in range(50, 501, 50)]
    curves = plot_loss_curves(history, evals, tmp_path / "loss_curves.png")
    names = [f"class-{i}" for i in range(10)]
    confusion = plot_confusion_matrix([[10 * (i == j) + j for j in range(10)] for i in range(10)], names, tmp_path / "cm.png")
    for path in (curves, confusion):
        uri = png_data_uri(path)
        with Image.open(path) as original:
            assert _decoded(uri).width == min(original.width, 800)
        assert len(uri) < 120_000, f"{path.name}: {len(uri):,} characters"  # stored in the Prefect database on every run

    text = plots_markdown([("Loss curves", curves), ("Confusion matrix", confusion)])
    assert text.count(f"]({PREFIX}") == 2
    assert "### Loss curves" in text and f"`{confusion}`" in text


def test_compare_report_shows_its_chart_as_a_file_or_inline(tmp_path):
    rows = [
        {
            "strategy": name,
            "trainable_params": 10,
            "total_params": 100,
            "trainable_pct": 10.0,
            "train_runtime_s": t,
            "samples_per_s": 5.0,
            "peak_memory_mb": m,
            "artifact_mb": 1.0,
            "accuracy": a,
            "macro_f1": a,
            "forgetting": 0.0,
            "hyperparameters": "lr 1e-3",
            "accuracy_ci": [a - 0.05, a + 0.05],
            "macro_f1_ci": [a - 0.05, a + 0.05],
            "backbone_examples": 100,
            "paired": paired,
        }
        for name, t, m, a, paired in (
            ("lora", 3.0, 300.0, 0.8, {"against": "full_fine_tuning", "a_only": 9, "b_only": 4, "p_value": 0.13}),
            ("full_fine_tuning", 5.0, 500.0, 0.85, None),
        )
    ]
    chart = plot_quality_vs_cost(rows, tmp_path / CHART_FILE)
    report = {
        "model": "m",
        "prepared_data": "p",
        "eval_rows": 10,
        "budget": {"description": "b"},
        "rows": rows,
        "recommendation": recommend(rows),
        "chart": str(chart),
    }
    assert f"![quality against cost]({CHART_FILE})" in report_markdown(report)  # report.md, next to the chart
    assert f"![quality against cost]({PREFIX}" in report_markdown(report, chart_src=png_data_uri(chart))
