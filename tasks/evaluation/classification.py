"""How good is a trained model, and did it overfit?

Reads what the training worker left in a run directory and writes what a person (or
the model registry) wants to look at:

    run_dir/
      predictions.json        (input)  labels, predictions, probabilities on the eval split
      metrics.json            (input)  per-step training loss, periodic evaluations, timings
      evaluation.json         (output) metrics, overfitting verdict, a few training figures
      plots/loss_curves.png   (output) training loss per step, evaluation losses, best marked
      plots/confusion_matrix.png

Everything but the thin :func:`evaluate_task` wrapper at the end is plain Python
(numpy + matplotlib's object API, no pyplot state); the wrapper runs
:func:`evaluate_run` as a Prefect task and publishes :func:`metrics_markdown` /
:func:`per_class_table` as artifacts, and the plots as images inside a markdown artifact
(:func:`plots_markdown`: ``data:image/png`` URIs, which both Prefect 3.9 UIs render; an
image artifact would need a URL the browser can fetch).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image  # matplotlib's own dependency
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks.errors import Problem, TrainingError

PREDICTIONS_FILE = "predictions.json"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
PLOTS_DIR = "plots"
LOSS_CURVES_PLOT = "loss_curves.png"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"

TRAINING_FIGURES = (
    "train_runtime_s",
    "samples_per_s",
    "peak_memory_mb",
    "trainable_params",
    "total_params",
    "steps",
    "stopped_early",
    "best_step",
)
"""Keys copied from metrics.json into evaluation.json (``None`` when the worker did not write one)."""

_DPI = 120


# ---- metrics -------------------------------------------------------------------------


def _class_ids(values: Sequence[int], name: str) -> np.ndarray:
    """A 1-D integer array, or ValueError for floats with fractions, booleans, nesting."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat list of class ids, got an array of shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    raise ValueError(f"{name} must hold integer class ids, got values of type {array.dtype}")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator element-wise, 0.0 where the denominator is 0 (no NaN, no warning)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str]) -> dict:
    """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix.

    ``labels`` and ``predictions`` are class ids indexing ``label_names``. Returns::

        {"n": int, "accuracy": float,
         "macro_precision": float, "macro_recall": float, "macro_f1": float,
         "per_class": {name: {"precision", "recall", "f1", "support"}},
         "confusion_matrix": [[int]]}   # rows = true label, columns = predicted label

    A score whose denominator is zero is 0.0 (a class never predicted has precision 0.0,
    a class absent from ``labels`` has recall 0.0). Macro averages are the unweighted
    mean over the classes that occur in ``labels`` or ``predictions`` (scikit-learn's
    default); a declared class that occurs in neither is still listed in ``per_class``
    (support 0) but does not drag the averages down.

    Raises ValueError when the lengths differ, there are no examples, or a class id is
    outside ``0 .. len(label_names) - 1``.
    """
    y_true = _class_ids(labels, "labels")
    y_pred = _class_ids(predictions, "predictions")
    k = len(label_names)
    if k == 0:
        raise ValueError("label_names is empty")
    if len(y_true) != len(y_pred):
        raise ValueError(f"labels ({len(y_true)}) and predictions ({len(y_pred)}) differ in length")
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    for name, ids in (("labels", y_true), ("predictions", y_pred)):
        bad = ids[(ids < 0) | (ids >= k)]
        if bad.size:
            raise ValueError(f"{name} hold class ids outside 0..{k - 1} ({k} label names): {sorted(set(bad.tolist()))[:10]}")

    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    true_positive = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(true_positive, predicted.astype(np.float64))
    recall = _ratio(true_positive, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)

    return {
        "n": int(len(y_true)),
        "accuracy": float(true_positive.sum() / len(y_true)),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            str(name): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": cm.tolist(),
    }


# ---- overfitting ---------------------------------------------------------------------


def _eval_series(evals: Sequence[dict]) -> tuple[str | None, list[dict]]:
    """The evaluations of one split, in step order, with a finite loss.

    The worker evaluates one monitoring split periodically ('validation' when there is
    one, else 'eval'); mixing splits would compare different data, so the split with
    the most evaluations is used ('validation' on a tie).
    """
    by_split: dict[str, list[dict]] = {}
    for record in evals:
        loss = record.get("eval_loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            by_split.setdefault(str(record.get("split", "eval")), []).append(record)
    if not by_split:
        return None, []
    split = max(by_split, key=lambda s: (len(by_split[s]), s == "validation"))
    return split, sorted(by_split[split], key=lambda r: r["step"])


def _train_loss_near(history: Sequence[dict], after_step: float, up_to_step: int) -> float | None:
    """Mean training loss logged in (after_step, up_to_step]; else the last one logged by then.

    Averaging over an evaluation interval smooths the batch-to-batch noise of the logged
    losses, so two evaluation points compare like with like.
    """
    window = [r["train_loss"] for r in history if after_step < r["step"] <= up_to_step]
    if window:
        return float(np.mean(window))
    earlier = [r for r in history if r["step"] <= up_to_step]
    return float(earlier[-1]["train_loss"]) if earlier else None


def overfitting_check(
    history: Sequence[dict],
    evals: Sequence[dict],
    *,
    tolerance: float = 0.05,
    min_evals_after_best: int = 2,
    max_loss_ratio: float = 1.5,
    min_loss_gap: float = 0.1,
) -> dict:
    """Decide from the loss curves whether the model overfit its training data.

    Uses the evaluations of one split (the one evaluated most often, see
    :func:`_eval_series`) and, at each evaluation, the mean training loss logged since
    the previous one. The run is flagged when either rule holds:

    1. **Eval loss turned back up**: the final eval loss is more than ``tolerance``
       (relative, default 5%) above the best eval loss, the best came at least
       ``min_evals_after_best`` evaluations before the end, and the training loss at the
       final evaluation is lower than at the best one. If the training loss rose too,
       the run is *not* flagged: both rising means unstable training (learning rate
       too high), which the reason says instead.
    2. **Generalisation gap**: at the final evaluation, the eval loss is more than
       ``max_loss_ratio`` (1.5) times the training loss and above it by more than
       ``min_loss_gap`` (0.1, so near-zero losses do not trip the ratio).

    With fewer than two evaluations nothing is flagged and the reason says "not enough
    evaluations". Returns::

        {"overfitting": bool, "reason": str, "split": str | None, "n_evals": int,
         "best_eval_step": int | None, "best_eval_loss": float | None,
         "final_eval_step": int | None, "final_eval_loss": float | None,
         "train_loss_final": float | None,    # mean training loss near the final evaluation
         "relative_increase": float | None,   # (final - best) / best eval loss
         "loss_ratio": float | None}          # final eval loss / train_loss_final
    """
    split, series = _eval_series(evals)
    history = sorted((r for r in history if isinstance(r.get("train_loss"), (int, float))), key=lambda r: r["step"])
    result: dict[str, Any] = {
        "overfitting": False,
        "reason": "",
        "split": split,
        "n_evals": len(series),
        "best_eval_step": None,
        "best_eval_loss": None,
        "final_eval_step": None,
        "final_eval_loss": None,
        "train_loss_final": None,
        "relative_increase": None,
        "loss_ratio": None,
    }
    if not series:
        result["reason"] = "not enough evaluations (none logged; set training.eval_every to follow the eval loss during training)"
        return result

    losses = [float(r["eval_loss"]) for r in series]
    steps = [int(r["step"]) for r in series]
    best = int(np.argmin(losses))  # the first of equal minima
    last = len(series) - 1

    def train_at(i: int) -> float | None:
        return _train_loss_near(history, steps[i - 1] if i > 0 else -math.inf, steps[i])

    best_loss, final_loss = losses[best], losses[last]
    train_best, train_final = train_at(best), train_at(last)
    relative = (final_loss - best_loss) / best_loss if best_loss > 0 else (math.inf if final_loss > best_loss else 0.0)
    ratio = final_loss / train_final if train_final else None
    result.update(
        best_eval_step=steps[best],
        best_eval_loss=best_loss,
        final_eval_step=steps[last],
        final_eval_loss=final_loss,
        train_loss_final=train_final,
        relative_increase=relative if math.isfinite(relative) else None,
        loss_ratio=ratio,
    )
    if len(series) < 2:
        result["reason"] = (
            f"not enough evaluations (1 on the '{split}' split; at least 2 are needed to see a trend; set training.eval_every)"
        )
        return result

    findings: list[str] = []
    notes: list[str] = []
    rose = final_loss > best_loss * (1 + tolerance)
    if rose and last - best >= min_evals_after_best:
        rise = (
            f"{split} loss rose {relative:+.1%} from its best {best_loss:.4f} (step {steps[best]}) to {final_loss:.4f} (step {steps[last]})"
        )
        if train_best is None or train_final is None:
            notes.append(f"{rise}, but no training loss was logged to tell overfitting from unstable training")
        elif train_final < train_best:
            findings.append(
                f"{rise} while the training loss kept falling ({train_best:.4f} -> {train_final:.4f}); "
                f"the checkpoint of step {steps[best]} generalises best (use early stopping or more regularisation)"
            )
        else:
            notes.append(
                f"{rise}, but the training loss rose too ({train_best:.4f} -> {train_final:.4f}): "
                "training is unstable (learning rate too high?), not overfitting"
            )
    elif rose:
        notes.append(
            f"{split} loss is {relative:+.1%} above its best (step {steps[best]}) but only "
            f"{last - best} evaluation(s) later, too soon to call a trend"
        )

    if ratio is not None and ratio > max_loss_ratio and final_loss - train_final > min_loss_gap:
        findings.append(
            f"final {split} loss {final_loss:.4f} is {ratio:.1f}x the training loss {train_final:.4f} "
            f"(more than {max_loss_ratio:g}x): a large generalisation gap"
        )

    result["overfitting"] = bool(findings)
    if findings:
        result["reason"] = "; ".join(findings + notes)
    else:
        verdict = f"no sign of overfitting on {len(series)} '{split}' evaluations"
        if not rose:
            verdict += f": final loss {final_loss:.4f} is within {tolerance:.0%} of the best {best_loss:.4f} (step {steps[best]})"
        result["reason"] = "; ".join([verdict] + notes)
    return result


# ---- plots ---------------------------------------------------------------------------


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (shorter windows at the ends): a trend through noisy losses without lag."""
    kernel = np.ones(window)
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones_like(values), kernel, mode="same")


def save_figure(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def plot_loss_curves(history: Sequence[dict], evals: Sequence[dict], path: Path, title: str = "Training and evaluation loss") -> Path:
    """Training loss per logged step, evaluation losses as points, the best evaluation starred.

    Uses matplotlib's object API (a bare ``Figure`` renders with the Agg backend and is
    never registered with pyplot, so there is nothing global to close and it is safe in
    worker threads). Returns ``path``.
    """
    fig = Figure(figsize=(8, 4.8))
    ax = fig.subplots()
    train = sorted((r for r in history if isinstance(r.get("train_loss"), (int, float))), key=lambda r: r["step"])
    if train:
        x = np.array([r["step"] for r in train], dtype=np.float64)
        y = np.array([r["train_loss"] for r in train], dtype=np.float64)
        if len(train) >= 20:
            ax.plot(x, y, color="tab:blue", alpha=0.3, linewidth=1, label="training loss (logged)")
            ax.plot(x, _smooth(y, max(5, len(train) // 20) | 1), color="tab:blue", linewidth=2, label="training loss (smoothed)")
        else:
            ax.plot(x, y, color="tab:blue", linewidth=2, marker="." if len(train) < 50 else None, label="training loss")

    markers = {"validation": ("o", "tab:orange"), "eval": ("s", "tab:green")}
    by_split: dict[str, list[dict]] = {}
    for record in evals:
        if isinstance(record.get("eval_loss"), (int, float)) and math.isfinite(record["eval_loss"]):
            by_split.setdefault(str(record.get("split", "eval")), []).append(record)
    for split, records in sorted(by_split.items()):
        records = sorted(records, key=lambda r: r["step"])
        marker, color = markers.get(split, ("D", "tab:purple"))
        ax.plot(
            [r["step"] for r in records],
            [r["eval_loss"] for r in records],
            linestyle="--",
            linewidth=1.2,
            marker=marker,
            markersize=6,
            color=color,
            label=f"{split} loss",
        )

    split, series = _eval_series(evals)
    if series:
        best = min(series, key=lambda r: r["eval_loss"])
        ax.plot(
            [best["step"]],
            [best["eval_loss"]],
            marker="*",
            markersize=18,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            zorder=5,
            label=f"best {split} loss {best['eval_loss']:.4f} (step {best['step']})",
        )
        ax.axvline(best["step"], color="gray", linestyle=":", linewidth=1)

    if not train and not by_split:
        ax.text(0.5, 0.5, "no losses were logged", ha="center", va="center", transform=ax.transAxes, fontsize=12, color="gray")
    else:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9, frameon=False)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def plot_confusion_matrix(cm: Sequence[Sequence[int]], label_names: Sequence[str], path: Path, normalize: bool = True) -> Path:
    """A heat map of the confusion matrix, each cell annotated with its count and row share.

    Rows are the true labels, columns the predictions. With ``normalize`` the colour is
    the share of the true class (each row sums to 100%, the diagonal is per-class
    recall); without it, the colour is the raw count. Figure and font sizes scale with
    the number of classes so that up to ~20 classes stay readable. Returns ``path``.
    """
    counts = np.asarray(cm, dtype=np.int64)
    k = len(label_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {k} label names")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = _ratio(counts.astype(np.float64), np.broadcast_to(row_totals, counts.shape).astype(np.float64))
    colours = shares if normalize else counts
    vmax = 1.0 if normalize else max(1, int(counts.max()))

    side = min(16.0, max(4.5, 0.62 * k + 2.6))
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(colours, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
    colourbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colourbar.set_label("share of the true class" if normalize else "examples")
    if normalize:
        colourbar.ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")

    font = 11 if k <= 5 else 9 if k <= 10 else 8 if k <= 15 else 7
    two_lines = k <= 12
    for i in range(k):
        for j in range(k):
            text = f"{counts[i, j]}\n{shares[i, j]:.1%}" if two_lines else f"{counts[i, j]}\n{shares[i, j]:.0%}"
            dark = colours[i, j] > 0.55 * vmax
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if dark else "black",
                fontweight="bold" if i == j else "normal",
            )

    names = [_short(str(n)) for n in label_names]
    ax.set_xticks(
        range(k), names, rotation=45 if k > 3 or max(map(len, names)) > 10 else 0, ha="right" if k > 3 else "center", fontsize=max(font, 8)
    )
    ax.set_yticks(range(k), names, fontsize=max(font, 8))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    total = int(counts.sum())
    accuracy = np.trace(counts) / total if total else 0.0
    ax.set_title(f"Confusion matrix (n = {total}, accuracy {accuracy:.1%})")
    return save_figure(fig, path)


# ---- a run directory -----------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate_run` found and where it wrote it."""

    run_dir: Path
    split: str
    """The split the predictions were made on (normally 'eval', never seen in training)."""
    label_names: list[str]
    metrics: dict
    """:func:`classification_metrics` of the predictions."""
    eval_loss: float | None
    overfitting: dict
    """:func:`overfitting_check` of the loss curves, plus ``restored_step``."""
    training: dict
    """The :data:`TRAINING_FIGURES` copied from metrics.json."""
    evaluation_path: Path
    loss_curves_path: Path
    confusion_matrix_path: Path

    def to_dict(self) -> dict:
        """The content of evaluation.json (plot paths relative to the run directory)."""
        return {
            "split": self.split,
            "label_names": list(self.label_names),
            "eval_loss": self.eval_loss,
            "metrics": self.metrics,
            "overfitting": self.overfitting,
            "training": self.training,
            "plots": {
                "loss_curves": self.loss_curves_path.relative_to(self.run_dir).as_posix(),
                "confusion_matrix": self.confusion_matrix_path.relative_to(self.run_dir).as_posix(),
            },
        }


def _read_json(path: Path, what: str, problems: list[Problem]) -> dict | None:
    if not path.is_file():
        problems.append(
            Problem(str(path), f"{what} is missing", "the training worker writes it at the end of a successful run; check the worker's log")
        )
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(Problem(str(path), f"{what} is not readable JSON ({err})", "rerun the training; the file may have been cut short"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(str(path), f"{what} must be a JSON object, found {type(data).__name__}"))
        return None
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_class_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_predictions(path: Path, data: dict, problems: list[Problem]) -> None:
    """Append a problem for everything wrong with predictions.json (all of them, not the first)."""
    where = str(path)
    names = data.get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problems.append(Problem(where, "'label_names' must be a non-empty list of strings"))
        names = None
    columns = {}
    for key in ("labels", "predictions"):
        values = data.get(key)
        if not isinstance(values, list) or not all(_is_class_id(v) for v in values):
            problems.append(Problem(where, f"'{key}' must be a list of integer class ids"))
            continue
        columns[key] = values
        if names is not None:
            bad = sorted({v for v in values if not 0 <= v < len(names)})
            if bad:
                problems.append(
                    Problem(where, f"'{key}' hold class ids outside 0..{len(names) - 1} ({len(names)} label names): {bad[:10]}")
                )
    if len(columns) == 2:
        n_labels, n_predictions = len(columns["labels"]), len(columns["predictions"])
        if n_labels != n_predictions:
            problems.append(Problem(where, f"{n_labels} labels but {n_predictions} predictions"))
        elif n_labels == 0:
            problems.append(Problem(where, "holds no predictions (is the evaluation split empty?)"))
    probabilities = data.get("probabilities")
    if probabilities is not None and "labels" in columns and names is not None:
        if (
            not isinstance(probabilities, list)
            or len(probabilities) != len(columns["labels"])
            or not all(isinstance(row, list) and len(row) == len(names) for row in probabilities)
        ):
            problems.append(Problem(where, f"'probabilities' must hold one row of {len(names)} numbers per example"))
    if data.get("eval_loss") is not None and not _is_number(data["eval_loss"]):
        problems.append(Problem(where, "'eval_loss' must be a number"))


def _check_metrics(path: Path, data: dict, problems: list[Problem]) -> None:
    where = str(path)
    for key, needed in (("history", ("step", "train_loss")), ("evals", ("step", "eval_loss"))):
        records = data.get(key, [])
        if not isinstance(records, list) or not all(
            isinstance(r, dict) and all(_is_number(r.get(field)) for field in needed) for r in records
        ):
            problems.append(Problem(where, f"'{key}' must be a list of objects with numeric {' and '.join(repr(f) for f in needed)}"))


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_json(path: Path, data: dict) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def evaluate_run(run_dir: Path) -> EvaluationReport:
    """Evaluate a finished training run and write evaluation.json and the plots into it.

    Reads ``predictions.json`` and ``metrics.json``; raises :class:`TrainingError`
    naming the file (and listing every problem found) when either is missing or
    malformed. When early stopping restored an earlier checkpoint, the overfitting
    verdict says so: the curve may rise, but the evaluated model is the best one.
    """
    run_dir = Path(run_dir)
    predictions_path, metrics_path = run_dir / PREDICTIONS_FILE, run_dir / METRICS_FILE
    problems: list[Problem] = []
    predictions = _read_json(predictions_path, PREDICTIONS_FILE, problems)
    if predictions is not None:
        _check_predictions(predictions_path, predictions, problems)
    run_metrics = _read_json(metrics_path, METRICS_FILE, problems)
    if run_metrics is not None:
        _check_metrics(metrics_path, run_metrics, problems)
    if problems:
        raise TrainingError(problems)
    assert predictions is not None and run_metrics is not None

    label_names = [str(n) for n in predictions["label_names"]]
    metrics = classification_metrics(predictions["labels"], predictions["predictions"], label_names)
    history, evals = run_metrics.get("history", []), run_metrics.get("evals", [])
    overfitting = overfitting_check(history, evals)
    restored = run_metrics.get("best_step") if run_metrics.get("stopped_early") else None
    overfitting["restored_step"] = restored
    if restored is not None:
        overfitting["reason"] += f" (early stopping restored the weights of step {restored}; the evaluated model is that one)"

    plots = run_dir / PLOTS_DIR
    loss_curves = plot_loss_curves(history, evals, plots / LOSS_CURVES_PLOT)
    confusion = plot_confusion_matrix(metrics["confusion_matrix"], label_names, plots / CONFUSION_MATRIX_PLOT)
    eval_loss = predictions.get("eval_loss")
    report = EvaluationReport(
        run_dir=run_dir,
        split=str(predictions.get("split", "eval")),
        label_names=label_names,
        metrics=metrics,
        eval_loss=float(eval_loss) if eval_loss is not None else None,
        overfitting=overfitting,
        training={key: run_metrics.get(key) for key in TRAINING_FIGURES},
        evaluation_path=run_dir / EVALUATION_FILE,
        loss_curves_path=loss_curves,
        confusion_matrix_path=confusion,
    )
    _write_json(report.evaluation_path, report.to_dict())
    return report


# ---- for people: markdown and table rows ---------------------------------------------


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def per_class_table(report: EvaluationReport) -> list[dict]:
    """One row per class (precision, recall, F1, support), ready for a Prefect table artifact."""
    return [
        {
            "class": name,
            "precision": round(scores["precision"], 4),
            "recall": round(scores["recall"], 4),
            "f1": round(scores["f1"], 4),
            "support": scores["support"],
        }
        for name, scores in report.metrics["per_class"].items()
    ]


def metrics_markdown(report: EvaluationReport) -> str:
    """A readable summary: headline scores, per-class table, confusion matrix, overfitting verdict.

    Used as a Prefect markdown artifact and as the Evaluation section of the model card
    (so it starts at heading level 3).
    """
    m = report.metrics
    lines = [
        f"### Evaluation on the `{_cell(report.split)}` split ({m['n']:,} examples)",
        "",
        f"**Accuracy {m['accuracy']:.2%}**, **macro-F1 {m['macro_f1']:.4f}**.",
        "",
        "| accuracy | macro-F1 | macro precision | macro recall | eval loss |",
        "|---:|---:|---:|---:|---:|",
        f"| {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['macro_precision']:.4f} | {m['macro_recall']:.4f} | {_number(report.eval_loss)} |",
        "",
        "#### Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {_cell(row['class'])} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']:,} |"
        for row in per_class_table(report)
    ]

    names = [_cell(n) for n in report.label_names]
    lines += [
        "",
        "#### Confusion matrix",
        "",
        "Rows are true labels, columns predicted labels; each cell is a count and its share of the row.",
        "",
        "| true \\ predicted | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, row in zip(names, m["confusion_matrix"]):
        total = sum(row)
        cells = [f"{c:,} ({c / total:.1%})" if total else "0" for c in row]
        lines.append(f"| **{name}** | " + " | ".join(cells) + " |")

    o = report.overfitting
    if o["overfitting"]:
        verdict = "**Overfitting: yes.**"
    elif o.get("n_evals", 0) < 2:  # no trend to judge: say so instead of "no"
        verdict = "**Overfitting: cannot tell.**"
    else:
        verdict = "**Overfitting: no.**"
    lines += ["", "#### Overfitting check", "", f"{verdict} {_cell(o['reason'])}."]
    if o.get("best_eval_loss") is not None:
        lines += [
            "",
            f"Best {o['split']} loss {o['best_eval_loss']:.4f} at step {o['best_eval_step']}; "
            f"final {o['final_eval_loss']:.4f} at step {o['final_eval_step']}; "
            f"training loss near the end {_number(o['train_loss_final'])}.",
        ]

    t = report.training
    if any(v is not None for v in t.values()):
        params = (
            f"{t['trainable_params']:,} of {t['total_params']:,} ({t['trainable_params'] / t['total_params']:.2%})"
            if t.get("trainable_params") is not None and t.get("total_params")
            else "n/a"
        )
        lines += [
            "",
            "#### Training",
            "",
            "| train time | samples/s | peak memory | trainable parameters |",
            "|---:|---:|---:|---:|",
            f"| {_number(t.get('train_runtime_s'), 1)} s | {_number(t.get('samples_per_s'), 1)} | "
            f"{_number(t.get('peak_memory_mb'), 0)} MB | {params} |",
        ]
    return "\n".join(lines) + "\n"


def png_data_uri(path: Path, max_width: int = 800, colors: int = 256) -> str:
    """A PNG as a ``data:`` URI, at most ``max_width`` pixels wide (the width of the Prefect UI's artifact
    column) and reduced to a ``colors`` palette: a plot takes a few tens of KB."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.width > max_width:
        rgb = rgb.resize((max_width, round(rgb.height * max_width / rgb.width)), Image.Resampling.LANCZOS)
    palette = rgb.quantize(colors=colors)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plots_markdown(plots: Sequence[tuple[str, Path]]) -> str:
    """Markdown showing each ``(title, png)``: a heading, the image inline, and the file it came from."""
    lines: list[str] = []
    for title, path in plots:
        lines += [f"### {title}", "", f"![{title}]({png_data_uri(path)})", "", f"`{path}`", ""]
    return "\n".join(lines)


# ---- Prefect wrapper -----------------------------------------------------------------


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(run_dir: Path) -> EvaluationReport:
    """Metrics, plots and the overfitting verdict of a run, published as Prefect artifacts."""
    report = evaluate_run(run_dir)
    create_table_artifact(per_class_table(report), key="per-class-metrics", description="Per-class precision, recall and F1")
    create_markdown_artifact(metrics_markdown(report), key="evaluation", description=f"Evaluation of {run_dir.name}")
    plots = [("Loss curves", report.loss_curves_path), ("Confusion matrix", report.confusion_matrix_path)]
    create_markdown_artifact(
        plots_markdown(plots), key="evaluation-plots", description=f"Loss curves and confusion matrix of {run_dir.name}"
    )
    m = report.metrics
    get_run_logger().info(
        f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}; overfitting: {report.overfitting['reason']}; "
        f"plots in {report.loss_curves_path.parent}"
    )
    return report
