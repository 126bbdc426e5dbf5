"""The compare report for people: scores with their spread, the results table and the markdown report.

Plain Python (no numpy, matplotlib, torch or Prefect): the CLI prints its tables with it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from adaptflow.tasks.evaluation.compare_config import BOOTSTRAP_RESAMPLES, CHART_FILE, CURVES_FILE


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def score_text(r: dict[str, Any], key: str) -> str:
    """A score of a report row: '0.8012', or mean±sd over the seeds when there were several ('0.801±0.004')."""
    values = (r.get("seeds") or {}).get(key, [])
    if len(values) > 1:
        mean, sd = mean_sd(values)
        return f"{mean:.3f}±{sd:.3f}"
    return f"{r[key]:.4f}"


def interval_text(r: dict[str, Any], key: str) -> str:
    """A row's 95% interval of accuracy or macro_f1: '0.776-0.831'."""
    lo, hi = r[f"{key}_ci"]
    return f"{lo:.3f}-{hi:.3f}"


def _p_value(r: dict[str, Any]) -> str:
    return f"{r['paired']['p_value']:.3f}" if r.get("paired") else "best"


def table_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the results table (Prefect table artifact and the markdown report); the key columns first."""
    return [
        {
            "strategy": r["strategy"],
            "accuracy": score_text(r, "accuracy"),
            "accuracy 95% CI": interval_text(r, "accuracy"),
            "macro-F1": score_text(r, "macro_f1"),
            "macro-F1 95% CI": interval_text(r, "macro_f1"),
            "p vs best": _p_value(r),
            "train time (s)": round(r["train_runtime_s"], 1),
            "peak memory (MB)": round(r["peak_memory_mb"]),
            "trainable params": f"{r['trainable_params']:,} ({r['trainable_pct']:.2f}%)",
            "backbone examples": f"{r['backbone_examples']:,}",
            "samples/s": round(r["samples_per_s"], 1),
            "artifact (MB)": round(r["artifact_mb"], 1),
            "forgetting": round(r["forgetting"], 4),
            "hyper-parameters": r["hyperparameters"],
        }
        for r in rows
    ]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def report_markdown(report: dict[str, Any], chart_src: str = CHART_FILE, curves_src: str = CURVES_FILE) -> str:
    """The whole report for a person: budget, table, uncertainty, search, learning curves, recommendation, charts.

    ``chart_src`` and ``curves_src`` are the images' sources: the file names for ``report.md``
    next to them, ``data:`` URIs for the Prefect artifact (:func:`adaptflow.tasks.evaluation.classification.png_data_uri`).
    """
    rows = table_rows(report["rows"])
    header = list(rows[0])
    lines = [
        f"# Strategy comparison: {report['model']}",
        "",
        f"Same prepared data (`{report['prepared_data']}`), same evaluation set ({report['eval_rows']} rows), "
        f"same budget: {report['budget']['description']}.",
        "",
        f"Intervals: 95% bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the evaluation rows). p vs best: the paired McNemar "
        "test (exact, mid-p) of each strategy against the most accurate one on the same evaluation rows"
        + (
            f"; scores are mean±sd over {report['seeds']} seeds, intervals and tests of the first seed."
            if report.get("seeds", 1) > 1
            else "."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(row[h]) for h in header) + " |" for row in rows),
        "",
        "Forgetting: drift from the pre-trained model on general English text "
        "(encoders: 1 - cosine similarity of sentence embeddings; 0 = unchanged).",
        "",
    ]
    if report.get("search"):
        lines += [
            "## Hyper-parameter search (picked on the validation split)",
            "",
            "| strategy | tried | winner | validation loss | validation accuracy |",
            "|---|---|---|---|---|",
        ]
        for name, s in report["search"].items():
            lines.append(
                f"| {name} | {len(s['trials'])} | {s['winner']['label']} | {s['winner']['validation_loss']:.4f} | {s['winner']['validation_accuracy']:.4f} |"
            )
        lines.append("")
    lines += [
        "## Learning curves (validation split)",
        "",
        *report.get("curve_findings", []),
        "",
        f"![learning curves]({curves_src})",
        "",
        "## Recommendation",
        "",
        *report["recommendation"]["text"],
        "",
        f"![quality against cost]({chart_src})",
        "",
        f"Chart: `{report['chart']}`",
        "",
    ]
    return "\n".join(lines)


def folder_size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20
