"""adaptflow.tasks.evaluation.classification: metrics checked against hand-computed values, the overfitting rules, the run-directory files."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest

from adaptflow.tasks.errors import TrainingError
from adaptflow.tasks.evaluation.classification import (
    EvaluationReport,
    classification_metrics,
    evaluate_run,
    metrics_markdown,
    overfitting_check,
    per_class_table,
    plot_confusion_matrix,
    plot_loss_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---- classification_metrics ----------------------------------------------------------

# Three classes, ten examples. By hand:
#   true a: predicted a, a, b, c    -> row [2, 1, 1]
#   true b: predicted b, b, a       -> row [1, 2, 0]
#   true c: predicted c, c, b       -> row [0, 1, 2]
# column sums (predicted): a 3, b 4, c 3; row sums (support): a 4, b 3, c 3
# accuracy  = 6/10
# precision = a 2/3, b 2/4, c 2/3       recall = a 2/4, b 2/3, c 2/3
# f1        = a 2*(2/3*1/2)/(2/3+1/2) = 4/7,  b 4/7,  c 2/3
# macro P = macro R = (2/3 + 1/2 + 2/3)/3 = 11/18;  macro F1 = (4/7 + 4/7 + 2/3)/3 = 38/63
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTIONS = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
NAMES = ["a", "b", "c"]


def test_metrics_match_hand_computed_values():
    m = classification_metrics(LABELS, PREDICTIONS, NAMES)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.6, abs=1e-12)
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    expected = {
        "a": (2 / 3, 1 / 2, 4 / 7, 4),
        "b": (1 / 2, 2 / 3, 4 / 7, 3),
        "c": (2 / 3, 2 / 3, 2 / 3, 3),
    }
    for name, (precision, recall, f1, support) in expected.items():
        scores = m["per_class"][name]
        assert scores["precision"] == pytest.approx(precision, abs=1e-12)
        assert scores["recall"] == pytest.approx(recall, abs=1e-12)
        assert scores["f1"] == pytest.approx(f1, abs=1e-12)
        assert scores["support"] == support
    assert m["macro_precision"] == pytest.approx(11 / 18, abs=1e-12)
    assert m["macro_recall"] == pytest.approx(11 / 18, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(38 / 63, abs=1e-12)
    json.dumps(m)  # plain Python types only


def test_class_never_predicted_scores_zero_not_nan():
    # class "c" (2) is never predicted: precision 0/0 -> 0.0, recall 0/2 = 0, f1 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 RuntimeWarning would fail the test
        m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 1], NAMES)
    c = m["per_class"]["c"]
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 2)
    b = m["per_class"]["b"]  # predicted 3 times, right once; recall 1/1
    assert b["precision"] == pytest.approx(1 / 3)
    assert b["recall"] == 1.0
    assert b["f1"] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))  # = 1/2
    assert m["macro_f1"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 2, 0]]


def test_perfect_predictions_score_one():
    labels = [0, 1, 1, 0, 1]
    m = classification_metrics(labels, labels, ["negative", "positive"])
    assert m["accuracy"] == m["macro_f1"] == m["macro_precision"] == m["macro_recall"] == 1.0
    assert all(s["f1"] == 1.0 for s in m["per_class"].values())
    assert m["confusion_matrix"] == [[2, 0], [0, 3]]


def test_declared_class_absent_everywhere_does_not_dilute_macro_average():
    m = classification_metrics([0, 1], [0, 1], NAMES)
    assert m["macro_f1"] == 1.0
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.parametrize(
    "labels, predictions, message",
    [
        ([0, 3], [0, 1], "outside 0..2"),
        ([0, 1], [0, -1], "outside 0..2"),
        ([0, 1, 2], [0, 1], "differ in length"),
        ([], [], "no examples"),
        ([0.5, 1], [0, 1], "integer class ids"),
    ],
)
def test_invalid_inputs_raise_value_error(labels, predictions, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, predictions, NAMES)


# ---- overfitting_check ---------------------------------------------------------------


def curve(train: list[float], evals: list[float], every: int = 10, split: str = "validation") -> tuple[list[dict], list[dict]]:
    """A history with one logged train loss per step and an evaluation every `every` steps."""
    history = [{"step": i + 1, "epoch": (i + 1) / 100, "train_loss": loss, "learning_rate": 1e-4} for i, loss in enumerate(train)]
    records = [
        {"step": (i + 1) * every, "epoch": (i + 1) * every / 100, "eval_loss": loss, "accuracy": 0.8, "split": split}
        for i, loss in enumerate(evals)
    ]
    return history, records


def falling(n: int, start: float, end: float) -> list[float]:
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def test_overfitting_flagged_when_eval_loss_turns_up_while_train_loss_falls():
    history, evals = curve(falling(60, 0.7, 0.1), [0.60, 0.45, 0.40, 0.44, 0.50, 0.58])
    result = overfitting_check(history, evals)
    assert result["overfitting"] is True
    assert result["best_eval_step"] == 30
    assert result["best_eval_loss"] == pytest.approx(0.40)
    assert result["final_eval_loss"] == pytest.approx(0.58)
    assert result["relative_increase"] == pytest.approx(0.45)
    assert "kept falling" in result["reason"] and "step 30" in result["reason"]
    assert result["train_loss_final"] < 0.2


def test_steadily_improving_curve_is_not_flagged():
    history, evals = curve(falling(60, 0.7, 0.35), [0.65, 0.55, 0.48, 0.44, 0.42, 0.41])
    result = overfitting_check(history, evals)
    assert result["overfitting"] is False
    assert result["best_eval_step"] == result["final_eval_step"] == 60
    assert "no sign of overfitting" in result["reason"]


def test_small_rise_within_tolerance_is_not_flagged():
    history, evals = curve(falling(60, 0.7, 0.35), [0.60, 0.50, 0.40, 0.41, 0.41, 0.415])  # +3.75% < 5%
    assert overfitting_check(history, evals)["overfitting"] is False


def test_rise_right_after_the_best_is_too_soon_to_flag():
    history, evals = curve(falling(40, 0.7, 0.35), [0.60, 0.50, 0.40, 0.50])  # +25%, but only 1 evaluation after the best
    result = overfitting_check(history, evals)
    assert result["overfitting"] is False
    assert "too soon" in result["reason"]


def test_both_losses_rising_is_instability_not_overfitting():
    train = falling(30, 0.7, 0.4) + falling(30, 0.4, 0.9)
    history, evals = curve(train, [0.60, 0.50, 0.40, 0.55, 0.70, 0.90])
    result = overfitting_check(history, evals)
    assert result["overfitting"] is False
    assert "unstable" in result["reason"]


def test_large_final_gap_between_eval_and_train_loss_is_flagged():
    history, evals = curve(falling(40, 0.6, 0.05), [0.70, 0.62, 0.60, 0.59])  # still improving, but 0.59 vs ~0.06
    result = overfitting_check(history, evals)
    assert result["overfitting"] is True
    assert result["loss_ratio"] > 1.5
    assert "generalisation gap" in result["reason"]


def test_one_evaluation_is_not_enough():
    history, evals = curve(falling(10, 0.7, 0.1), [0.9])
    result = overfitting_check(history, evals)
    assert result["overfitting"] is False
    assert "not enough evaluations" in result["reason"]
    assert result["best_eval_loss"] == pytest.approx(0.9)
    assert "not enough evaluations" in overfitting_check(history, [])["reason"]


def test_uses_the_most_evaluated_split_only():
    history, evals = curve(falling(60, 0.7, 0.35), [0.65, 0.55, 0.48, 0.44, 0.42, 0.41])
    evals.append({"step": 60, "epoch": 0.6, "eval_loss": 5.0, "accuracy": 0.1, "split": "eval"})
    result = overfitting_check(history, evals)
    assert result["split"] == "validation" and result["n_evals"] == 6
    assert result["overfitting"] is False


# ---- plots and the run directory -----------------------------------------------------


def write_run(run_dir: Path, *, names: list[str] | None = None, labels=None, predictions=None) -> Path:
    names = names or ["negative", "positive"]
    labels = labels if labels is not None else [0, 0, 1, 1, 1, 0, 1, 0]
    predictions = predictions if predictions is not None else [0, 1, 1, 1, 0, 0, 1, 0]
    history, evals = curve(falling(60, 0.7, 0.1), [0.60, 0.45, 0.40, 0.44, 0.50, 0.58])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "predictions.json").write_text(
        json.dumps(
            {
                "split": "eval",
                "label_names": names,
                "labels": labels,
                "predictions": predictions,
                "probabilities": [[0.5] * len(names) for _ in labels],
                "eval_loss": 0.4321,
            }
        )
    )
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "history": history,
                "evals": evals,
                "train_runtime_s": 12.5,
                "samples_per_s": 320.0,
                "peak_memory_mb": 1024.0,
                "trainable_params": 1536,
                "total_params": 22_700_000,
                "steps": 60,
                "examples_seen": 1920,
                "stopped_early": False,
                "best_step": 30,
            }
        )
    )
    return run_dir


def test_evaluate_run_writes_evaluation_json_and_two_pngs(tmp_path):
    run_dir = write_run(tmp_path / "run")
    report = evaluate_run(run_dir)

    assert isinstance(report, EvaluationReport)
    assert report.evaluation_path == run_dir / "evaluation.json"
    saved = json.loads(report.evaluation_path.read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["split"] == "eval"
    assert saved["eval_loss"] == pytest.approx(0.4321)
    assert saved["metrics"]["accuracy"] == pytest.approx(6 / 8)
    assert saved["metrics"]["confusion_matrix"] == [[3, 1], [1, 3]]
    assert saved["overfitting"]["overfitting"] is True
    assert saved["training"]["trainable_params"] == 1536
    assert saved["training"]["total_params"] == 22_700_000
    assert saved["training"]["peak_memory_mb"] == 1024.0
    assert saved["plots"] == {"loss_curves": "plots/loss_curves.png", "confusion_matrix": "plots/confusion_matrix.png"}

    for path in (report.loss_curves_path, report.confusion_matrix_path):
        assert path.parent == run_dir / "plots"
        width, height = png_size(path)
        assert width >= 400 and height >= 300
        assert path.stat().st_size > 10_000


def test_markdown_and_table_summarise_the_report(tmp_path):
    report = evaluate_run(write_run(tmp_path / "run"))
    rows = per_class_table(report)
    assert [r["class"] for r in rows] == ["negative", "positive"]
    assert rows[0] == {"class": "negative", "precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    text = metrics_markdown(report)
    assert "Accuracy 75.00%" in text
    assert "| negative | 0.7500 | 0.7500 | 0.7500 | 4 |" in text
    assert "| **negative** | 3 (75.0%) | 1 (25.0%) |" in text
    assert "**Overfitting: yes.**" in text
    assert "1,536 of 22,700,000" in text


def test_missing_predictions_file_is_a_training_error_naming_it(tmp_path):
    run_dir = write_run(tmp_path / "run")
    (run_dir / "predictions.json").unlink()
    with pytest.raises(TrainingError, match="predictions.json"):
        evaluate_run(run_dir)


def test_malformed_predictions_report_every_problem_naming_the_file(tmp_path):
    run_dir = write_run(tmp_path / "run", labels=[0, 5, 1], predictions=[0, 1])
    with pytest.raises(TrainingError) as caught:
        evaluate_run(run_dir)
    message = str(caught.value)
    assert "predictions.json" in message
    assert "outside 0..1" in message and "3 labels but 2 predictions" in message

    (run_dir / "predictions.json").write_text('{"labels": [0, 1')
    with pytest.raises(TrainingError, match="predictions.json.*not readable JSON"):
        evaluate_run(run_dir)


def test_confusion_matrix_plot_handles_twenty_classes(tmp_path):
    k = 20
    cm = [[(30 if i == j else (i * j) % 4) for j in range(k)] for i in range(k)]
    path = plot_confusion_matrix(cm, [f"class_{i:02d}_name" for i in range(k)], tmp_path / "cm20.png")
    width, height = png_size(path)
    assert width > 1000 and height > 1000


def test_loss_curve_plot_without_any_losses_still_renders(tmp_path):
    path = plot_loss_curves([], [], tmp_path / "empty.png")
    assert png_size(path)[0] >= 400


def test_markdown_says_overfitting_was_not_checked_with_fewer_than_two_evaluations(tmp_path):
    from dataclasses import replace

    report = evaluate_run(write_run(tmp_path / "run"))
    one_eval = replace(report, overfitting={**report.overfitting, "overfitting": False, "n_evals": 1, "reason": "not enough evaluations"})
    text = metrics_markdown(one_eval)
    assert "**Overfitting: cannot tell.**" in text and "Overfitting: no." not in text
