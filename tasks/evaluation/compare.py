"""Comparing strategies on one budget: the plain functions behind the compare flow.

``flows/compare.py`` runs the strategies; everything here is Prefect-free and unit-tested:
the per-strategy configurations (same data, same budget), the hyper-parameter grid and
the search's view of the data (training + validation rows only), the uncertainty of the
scores (bootstrap intervals, the paired McNemar test), the learning curves, the Pareto
front, the recommendation and the charts. The configuration is in ``compare_config.py``
and the tables and markdown report in ``compare_report.py``: the CLI reads both without
the imports this module needs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from adaptflow.tasks.config import (
    AdaptConfig,
    Lora,
)
from adaptflow.tasks.data.store import open_prepared
from adaptflow.tasks.evaluation.classification import classification_metrics, save_figure
from adaptflow.tasks.evaluation.compare_config import (
    BOOTSTRAP_RESAMPLES,
    CURVE_POINTS,
    CURVE_VALIDATION_ROWS,
    SIGNIFICANCE,
    CompareConfig,
)
from adaptflow.tasks.evaluation.cost import examples_per_step
from adaptflow.tasks.strategies import get_strategy


def _updated(cfg: AdaptConfig, training: dict | None = None, strategy: dict | None = None) -> AdaptConfig:
    raw = cfg.model_dump()
    raw["training"].update(training or {})
    raw["strategy"].update(strategy or {})
    return AdaptConfig.model_validate(raw)


# ---- budget ----------------------------------------------------------------------------


def backbone_budget(cc: CompareConfig, train_rows: int) -> int | None:
    """The examples budget: examples through the backbone's forward pass per strategy (None under a time budget)."""
    if cc.budget_seconds:
        return None
    return cc.budget_examples or (cc.budget_passes or cc.training.epochs) * train_rows


def with_budget(cfg: AdaptConfig, cc: CompareConfig, train_rows: int) -> AdaptConfig:
    """The config trained under the comparison's budget, each strategy on its natural schedule inside it.

    Examples budget (what costs money is the backbone): a fine-tuning strategy makes the
    optimizer steps that push the budget's examples through its backbone, over the same
    seeded sampler order as every other fine-tuning strategy. Transfer learning's backbone
    runs once over the training rows to cache their features; its head then makes its
    ``head_epochs`` passes over them, which cost no backbone forward pass.
    Time budget: the strategy's own schedule, stopped after ``budget_seconds``.
    Under an examples budget the validation split is evaluated about ``CURVE_POINTS`` times
    (the learning curves); under a time budget once per epoch.
    """
    if cc.budget_seconds:
        return _updated(cfg, {"time_limit_s": cc.budget_seconds, "max_steps": None})
    per_step = examples_per_step(cfg)
    if get_strategy(cfg.strategy.name).uses_cached_features:
        steps = cfg.strategy.passes(cfg.training) * math.ceil(train_rows / per_step)
        training: dict[str, Any] = {"max_steps": None}
    else:
        steps = max(1, math.ceil(backbone_budget(cc, train_rows) / per_step))
        training = {"max_steps": steps}
    if cc.data.validation_fraction > 0:
        training["eval_every"] = max(1, steps // CURVE_POINTS)
    return _updated(cfg, training)


def backbone_examples(cfg: AdaptConfig, examples_seen: int, train_rows: int) -> int:
    """Examples that went through the backbone's forward pass in training."""
    return train_rows if get_strategy(cfg.strategy.name).uses_cached_features else examples_seen


def budget_sentence(cc: CompareConfig, train_rows: int, plans: Sequence[AdaptConfig]) -> str:
    """The budget rule in one sentence, for the report."""
    if cc.budget_seconds:
        return (
            f"every strategy trains on its own schedule for at most {cc.budget_seconds:g} s of training "
            "(transfer learning: its head passes over features cached by one backbone pass)"
        )
    budget = backbone_budget(cc, train_rows)
    cached = [c for c in plans if get_strategy(c.strategy.name).uses_cached_features]
    tuned = [c for c in plans if not get_strategy(c.strategy.name).uses_cached_features]
    parts = [f"{budget:,} training examples through the backbone's forward pass per strategy"]
    if tuned:
        parts.append(f"fine-tuning strategies see the same examples in the same seeded order ({tuned[0].training.max_steps} steps)")
    for c in cached:
        over = f", {train_rows - budget:,} more than the budget" if train_rows > budget else ""
        parts.append(
            f"{c.strategy.name} runs its backbone once over the {train_rows:,} training rows{over} and then makes its "
            f"{c.strategy.passes(c.training)} head passes over the cached features, which cost no backbone pass"
        )
    return "; ".join(parts)


def with_seed(cfg: AdaptConfig, seed_index: int) -> AdaptConfig:
    """The config of the seed_index-th repetition (seed, seed+1, ...)."""
    return cfg if seed_index == 0 else _updated(cfg, {"seed": cfg.training.seed + seed_index})


# ---- cost before spending ---------------------------------------------------------------

PROBE_STEPS = 8  # optimizer steps each strategy is timed for by --estimate
PROBE_ROWS = 64  # validation and evaluation rows of the probe
PROBE_FEATURE_ROWS = 1024  # training rows of the probe at least: a cached-feature probe featurizes them all


def probe_config(cfg: AdaptConfig) -> AdaptConfig:
    """A strategy's config for the --estimate probe: a few steps, no curves, nothing registered."""
    steps = PROBE_STEPS if not get_strategy(cfg.strategy.name).uses_cached_features else None
    cfg = _updated(cfg, {"max_steps": steps, "eval_every": None, "early_stopping_patience": None, "time_limit_s": None})
    return AdaptConfig.model_validate({**cfg.model_dump(), "registry": {"register_model": False}})


def probe_view(prepared_path: Path, dest: Path, rows: int, seed: int) -> Path:
    """The probe's data: ``rows`` training rows and PROBE_ROWS validation and evaluation rows, seeded samples of the real ones."""
    source = open_prepared(Path(prepared_path), reused=True)
    splits = {"train": "train", "eval": "eval", **({"validation": "validation"} if "validation" in source.manifest["splits"] else {})}
    caps = {"train": rows, "eval": PROBE_ROWS, "validation": PROBE_ROWS}
    return prepared_view(prepared_path, dest, splits, {k: v for k, v in caps.items() if k in splits}, seed)


def projected_seconds(cfg: AdaptConfig, probe: dict[str, Any], probe_rows: dict[str, int], splits: dict[str, int]) -> float:
    """A strategy's train time under the budget (as the table counts it) from its probe's metrics.

    Fine-tuning: seconds per optimizer step in the probe x the budget's steps. Transfer
    learning: seconds per row of its feature pass x the rows it featurizes (training,
    validation and evaluation), plus seconds per head step x its head steps. Under a time
    budget: at most that many seconds (and the step that crosses it).
    """
    # The first step carries the warm-up (allocations, first kernels, the loader starting): counted
    # once, not spread over a probe's few steps, which would project it onto every step of the run.
    loop_s = probe["loop_time_s"] - probe.get("eval_time_s", 0.0)
    first_s = probe.get("first_step_s") if probe["steps"] > 1 else None
    if first_s is None:
        warm_up_s, step_s = 0.0, loop_s / max(1, probe["steps"])
    else:
        warm_up_s, step_s = first_s, (loop_s - first_s) / (probe["steps"] - 1)
    steps = cfg.training.max_steps or cfg.strategy.passes(cfg.training) * math.ceil(splits["train"] / examples_per_step(cfg))
    seconds = warm_up_s + step_s * (steps - (1 if first_s is not None else 0))
    if get_strategy(cfg.strategy.name).uses_cached_features:
        rows, probed = sum(splits.values()), sum(probe_rows.values())
        warm_rows = probe.get("feature_first_batch_rows", 0)
        if 0 < warm_rows < probed:  # the first batch (the backbone's warm-up) once, the rest per row
            warm = probe["feature_first_batch_s"]
            seconds += warm + (probe["feature_time_s"] - warm) / (probed - warm_rows) * (rows - warm_rows)
        else:
            seconds += probe["feature_time_s"] / max(1, probed) * rows
    return min(seconds, cfg.training.time_limit_s + step_s) if cfg.training.time_limit_s else seconds


# ---- search ----------------------------------------------------------------------------


def grid(cfg: AdaptConfig, cc: CompareConfig) -> list[dict[str, Any]]:
    """Grid points of one strategy: learning rate x LoRA rank (only what the search varies)."""
    rates = [cfg.learning_rate() * f for f in cc.search_lr_factors] or [cfg.learning_rate()]
    ranks = cc.search_lora_ranks if isinstance(cfg.strategy, Lora) and cc.search_lora_ranks else [None]
    return [{"learning_rate": lr, **({"lora_r": r} if r else {})} for lr in rates for r in ranks]


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{'lr' if k == 'learning_rate' else k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in point.items())


def trial_config(cfg: AdaptConfig, point: dict[str, Any], patience: int) -> AdaptConfig:
    """A search trial: the grid point, early stopping on the validation split, nothing registered."""
    steps = cfg.training.max_steps
    training = {"learning_rate": point["learning_rate"], "early_stopping_patience": patience}
    if steps:
        training["eval_every"] = max(1, steps // 8)
    strategy = {"lora_r": point["lora_r"]} if "lora_r" in point else {}
    cfg = _updated(cfg, training, strategy)
    return AdaptConfig.model_validate({**cfg.model_dump(), "registry": {"register_model": False}})


def final_config(cfg: AdaptConfig, point: dict[str, Any] | None) -> AdaptConfig:
    """The strategy's config with the search's winning point (or unchanged without a search)."""
    if not point:
        return cfg
    return _updated(cfg, {"learning_rate": point["learning_rate"]}, {"lora_r": point["lora_r"]} if "lora_r" in point else {})


def prepared_view(prepared_path: Path, dest: Path, splits: dict[str, str], max_rows: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A prepared folder holding the given splits of another one: ``{view split: source split}``.

    Only the named source split folders are opened. ``max_rows`` caps a view split to a
    seeded random sample of that many rows. Written once per ``dest``.
    """
    from datasets import DatasetDict, load_from_disk  # datasets loads slowly: imported where prepared data is read

    source = open_prepared(Path(prepared_path), reused=True)
    if (dest / "manifest.json").is_file():
        return dest
    view = DatasetDict({name: load_from_disk(str(source.dataset_path / split)) for name, split in splits.items()})
    for name, cap in (max_rows or {}).items():
        if len(view[name]) > cap:
            view[name] = view[name].shuffle(seed=seed).select(range(cap))
    view.save_to_disk(str(dest / source.dataset_path.name))
    manifest = {**source.manifest, "view_of": str(prepared_path), "view_splits": splits, "splits": {k: len(v) for k, v in view.items()}}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def search_view(prepared_path: Path, dest: Path) -> Path:
    """A prepared folder holding only the training and validation rows, the validation rows as its 'eval' split.

    Search trials train on this folder, so the evaluation (test) split is not in their
    reach at all: every number a trial reports, and so every choice, comes from the
    validation split. Only the ``train`` and ``validation`` split folders are opened.
    """
    return prepared_view(prepared_path, dest, {"train": "train", "eval": "validation"})


def curve_view(prepared_path: Path, dest: Path, splits: dict[str, int], seed: int) -> Path:
    """The prepared data the compared strategies train on: the same training and evaluation rows, and at most
    ``CURVE_VALIDATION_ROWS`` validation rows for the learning curves (a seeded sample), so that evaluating
    them several times costs little next to training. Without a validation split: the prepared folder itself."""
    if "validation" not in splits:
        return Path(prepared_path)
    return prepared_view(
        prepared_path, dest, {"train": "train", "validation": "validation", "eval": "eval"}, {"validation": CURVE_VALIDATION_ROWS}, seed
    )


def pick_best(trials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the lowest validation loss (ties: higher validation accuracy, then the earlier point)."""
    return min(trials, key=lambda t: (round(t["validation_loss"], 6), -t["validation_accuracy"]))


# ---- report ------------------------------------------------------------------------------


def pareto_front(rows: Sequence[dict[str, Any]], cost: str, quality: str = "accuracy") -> list[bool]:
    """For each row: True when no other row is at least as good on both and strictly better on one."""
    flags = []
    for r in rows:
        dominated = any(
            o is not r and o[cost] <= r[cost] and o[quality] >= r[quality] and (o[cost] < r[cost] or o[quality] > r[quality]) for o in rows
        )
        flags.append(not dominated)
    return flags


# ---- uncertainty ---------------------------------------------------------------------


def bootstrap_intervals(
    labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals of accuracy and macro-F1: the evaluation rows resampled with replacement."""
    y, p = np.asarray(labels), np.asarray(predictions)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"accuracy": [], "macro_f1": []}
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        m = classification_metrics(y[idx], p[idx], label_names)
        draws["accuracy"].append(m["accuracy"])
        draws["macro_f1"].append(m["macro_f1"])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()}


def mcnemar_midp(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """The paired McNemar test (exact, mid-p) of two classifiers on the same rows.

    Only the discordant rows count: ``a_only`` right for A and wrong for B, ``b_only`` the
    reverse. Under "equally good" each discordant row goes either way with probability 1/2;
    the two-sided mid-p value is 2 * (P[X < k] + P[X = k] / 2) for k = min(a_only, b_only),
    X ~ Binomial(a_only + b_only, 1/2).
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired test needs the same rows ({len(correct_a)} vs {len(correct_b)})")
    a_only = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    b_only = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    n, k = a_only + b_only, min(a_only, b_only)
    below = sum(math.comb(n, i) for i in range(k))
    p = 1.0 if n == 0 else min(1.0, 2 * (below + math.comb(n, k) / 2) / 2**n)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def paired_tests(rows: Sequence[dict[str, Any]], correct: dict[str, list[bool]]) -> dict[str, dict[str, Any]]:
    """McNemar of the most accurate strategy against each other one, on the same evaluation rows."""
    best = _best_of(rows)
    return {
        r["strategy"]: {"against": best["strategy"], **mcnemar_midp(correct[best["strategy"]], correct[r["strategy"]])}
        for r in rows
        if r is not best
    }


def _best_of(candidates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return max(candidates, key=lambda r: (r["accuracy"], r["macro_f1"], -r["train_runtime_s"]))


def recommend(
    rows: Sequence[dict[str, Any]],
    max_train_seconds: float | None = None,
    max_memory_mb: float | None = None,
    alpha: float = SIGNIFICANCE,
) -> dict[str, Any]:
    """The best quality overall, and the best within the given time/memory budget, with the reasons in words.

    Each row but the best carries ``paired`` (:func:`paired_tests`): a strategy whose
    difference from the best is not significant (p >= ``alpha``) is tied with it, and the
    cheapest of the tied strategies is named.
    """
    best = _best_of(rows)
    lines = [f"Best quality: **{best['strategy']}** (accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f})."]
    close = [r for r in rows if r is not best and r["paired"]["p_value"] >= alpha]
    beaten = [r for r in rows if r is not best and r not in close]
    if close:
        cheapest = min([best, *close], key=lambda r: r["train_runtime_s"])
        names = ", ".join(f"{r['strategy']} (p = {r['paired']['p_value']:.2f})" for r in close)
        lines.append(
            f"Tie: the difference of {names} from it is not significant (paired McNemar test on the same evaluation rows, "
            f"p >= {alpha:g}); the cheapest of the tied strategies to train is **{cheapest['strategy']}** "
            f"({cheapest['train_runtime_s']:.1f} s)."
        )
    if beaten:
        names = ", ".join(f"{r['strategy']} (p = {r['paired']['p_value']:.3g})" for r in beaten)
        lines.append(f"Significantly behind it (p < {alpha:g}): {names}.")
    result: dict[str, Any] = {
        "best_quality": best["strategy"],
        "tied_with": [r["strategy"] for r in close],
        "cheapest_of_tie": min([best, *close], key=lambda r: r["train_runtime_s"])["strategy"],
        "within_budget": None,
        "budget": {"max_train_seconds": max_train_seconds, "max_memory_mb": max_memory_mb},
    }
    if max_train_seconds or max_memory_mb:
        parts = [f"train time <= {max_train_seconds:g} s"] if max_train_seconds else []
        parts += [f"peak memory <= {max_memory_mb:g} MB"] if max_memory_mb else []
        limits = " and ".join(parts)
        fitting = [
            r
            for r in rows
            if (not max_train_seconds or r["train_runtime_s"] <= max_train_seconds)
            and (not max_memory_mb or r["peak_memory_mb"] <= max_memory_mb)
        ]
        if fitting:
            pick = _best_of(fitting)
            result["within_budget"] = pick["strategy"]
            lines.append(
                f"Best within your budget ({limits}): **{pick['strategy']}** (accuracy {pick['accuracy']:.4f}, "
                f"{pick['train_runtime_s']:.1f} s, {pick['peak_memory_mb']:.0f} MB)."
            )
        else:
            fastest = min(rows, key=lambda r: r["train_runtime_s"])
            smallest = min(rows, key=lambda r: r["peak_memory_mb"])
            lines.append(
                f"Nothing fits your budget ({limits}): the fastest was {fastest['strategy']} ({fastest['train_runtime_s']:.1f} s), "
                f"the smallest in memory {smallest['strategy']} ({smallest['peak_memory_mb']:.0f} MB)."
            )
    result["text"] = lines
    return result


# ---- learning curves ---------------------------------------------------------------------


def learning_curve(evals: Sequence[dict[str, Any]], examples_per_step: int, start_s: float = 0.0) -> list[dict[str, Any]]:
    """The validation evaluations of one training as points: examples seen, seconds of training, accuracy, loss.

    ``start_s`` is training time before the loop (transfer learning's feature pass).
    """
    return [
        {
            "step": e["step"],
            "examples": e["step"] * examples_per_step,
            "seconds": start_s + e.get("train_s", 0.0),
            "accuracy": e["accuracy"],
            "loss": e["eval_loss"],
        }
        for e in evals
        if e.get("split") == "validation"
    ]


def curve_findings(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    """In words: whether the leader on the validation split changed along the way, and which curves still rose at the end."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return ["No learning curves: there was no validation split (validation_fraction 0)."]
    lines = []
    points = min(len(v) for v in curves.values())
    if len(curves) > 1 and points > 1:
        leaders = []
        for i in range(points):  # the i-th evaluation of each strategy: the same share of its schedule
            leader = max(curves, key=lambda k: curves[k][round(i * (len(curves[k]) - 1) / max(1, points - 1))]["accuracy"])
            if not leaders or leaders[-1][1] != leader:
                leaders.append((i, leader))
        if len(leaders) > 1:
            steps = ", then ".join(f"{name} from {100 * (i + 1) // points}% of the budget" for i, name in leaders)
            lines.append(f"The leader on the validation split changed along the way: {steps}.")
        else:
            lines.append(f"{leaders[0][1]} led on the validation split at every point of the curves.")
    rising = [
        k
        for k, v in curves.items()
        if len(v) > 1 and v[-1]["accuracy"] > v[-2]["accuracy"] and v[-1]["accuracy"] >= max(p["accuracy"] for p in v)
    ]
    for name in rising:
        lines.append(f"{name}'s validation accuracy was still rising at the end: more budget would likely help {name}.")
    if not rising:
        lines.append("No curve was still rising at the end: more of the same budget is unlikely to change the ranking.")
    return lines


def plot_learning_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Validation accuracy against examples seen (left) and against seconds of training (right), one line per strategy."""
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (key, label) in zip(
        axes, (("examples", "training examples seen, log scale (transfer learning: head passes)"), ("seconds", "seconds of training"))
    ):
        for name, points in curves.items():
            if points:
                ax.plot([p[key] for p in points], [p["accuracy"] for p in points], marker="o", label=name)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_xscale("log")  # transfer learning's head passes see 20x the examples of one fine-tuning pass
    axes[0].set_ylabel("validation accuracy")
    axes[1].legend(loc="lower right", fontsize=9, frameon=False)
    fig.suptitle("Learning curves on the validation split (never the evaluation set)")
    return save_figure(fig, path)


def plot_quality_vs_cost(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Accuracy against train time and against peak memory; Pareto-optimal strategies starred and joined."""
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (cost, label) in zip(axes, (("train_runtime_s", "train time (s)"), ("peak_memory_mb", "peak memory (MB)"))):
        front = pareto_front(rows, cost)
        for r, on_front in zip(rows, front):
            ax.plot(
                r[cost],
                r["accuracy"],
                marker="*" if on_front else "o",
                markersize=16 if on_front else 8,
                color="tab:red" if on_front else "tab:gray",
                markeredgecolor="black",
                linestyle="none",
                zorder=3,
            )
            ax.annotate(r["strategy"], (r[cost], r["accuracy"]), textcoords="offset points", xytext=(6, 6), fontsize=9)
        line = sorted((r[cost], r["accuracy"]) for r, f in zip(rows, front) if f)
        ax.step([x for x, _ in line], [y for _, y in line], where="post", color="tab:red", linewidth=1, alpha=0.6, label="Pareto front")
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=9, frameon=False)
    axes[0].set_ylabel("evaluation accuracy")
    fig.suptitle("Quality against cost (star: no other strategy is both cheaper and better)")
    return save_figure(fig, path)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "x"
