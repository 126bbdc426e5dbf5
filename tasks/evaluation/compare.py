"""Comparing strategies on one budget: the compare configuration and the plain functions of its report.

``flows/compare.py`` runs the strategies; everything here is Prefect-free and unit-tested:
the per-strategy configurations (same data, same budget), the hyper-parameter grid and
the search's view of the data (training + validation rows only), the Pareto front, the
recommendation, the chart and the markdown/table renderings.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure
from pydantic import Field, model_validator

from adaptflow.tasks.config import (
    TASK_STRATEGY_NAMES,
    AdaptConfig,
    DataConfig,
    FullFineTuning,
    LaunchConfig,
    Lora,
    PartialFineTuning,
    RegistryConfig,
    StrategyConfig,
    TrainingConfig,
    TransferLearning,
    _Frozen,
    adaptflow_home,
    shared_field,
    validate_strictly,
)
from adaptflow.tasks.data.store import open_prepared
from adaptflow.tasks.evaluation.classification import save_figure

CLASSIFICATION_STRATEGIES = TASK_STRATEGY_NAMES  # domain adaptation is a first stage, not a strategy to compare
REPORT_FILE = "compare_report.json"
CHART_FILE = "quality_vs_cost.png"
SEARCH_DATA = "search_data"
CONCURRENCY_HELP = (
    "Strategies trained at the same time. 1 on CPU: parallel trainings fight for the same cores and "
    "memory bandwidth, which distorts the time and samples/s being compared. Raise it with one GPU per training."
)
TIE_TOLERANCE = 0.005  # accuracy differences below half a point are called a tie


class CompareConfig(_Frozen):
    """Several strategies on the same prepared data, evaluation set and budget, and one report."""

    # The sections an adapt run has, shared with AdaptConfig (defaults, checks and descriptions), some
    # with a description that says how compare uses them.
    model: str = shared_field("model")
    trust_remote_code: bool = shared_field("trust_remote_code")
    strategies: list[StrategyConfig] = Field(
        default_factory=lambda: [TransferLearning(), PartialFineTuning(), FullFineTuning(), Lora()],
        description="The strategies to compare, each with its own parameters. Default: all four classification strategies. "
        "Fields of another strategy are ignored in the Prefect form and an error in config files; a field of no strategy "
        "is always an error.",
    )
    data: DataConfig = shared_field("data", description="The task data, prepared once for every strategy.")
    training: TrainingConfig = shared_field("training", description="Optimisation hyperparameters shared by every strategy.")
    launch: LaunchConfig = shared_field("launch", description="Training processes of each strategy.")
    registry: RegistryConfig = shared_field(
        "registry",
        default_factory=lambda: RegistryConfig(register_model=False),
        description="Register each strategy's model (off by default); model_name is used as a prefix: '<name>-<strategy>'.",
    )
    work_dir: str | None = shared_field("work_dir")
    budget_examples: int | None = Field(
        None,
        ge=1,
        description="Training examples every strategy sees: the same examples in the same seeded order "
        "(transfer learning's head included). Empty: `epochs` passes over the training split.",
    )
    budget_seconds: float | None = Field(
        None,
        gt=0,
        description="Instead of an examples budget: each strategy trains with its own schedule (transfer learning "
        "makes its `head_epochs` passes) and stops after this many seconds of training.",
    )
    search_lr_factors: list[float] = Field(
        default_factory=list,
        description="Hyper-parameter search: multiples of each strategy's learning rate to try, e.g. 0.5,1,2. "
        "Empty: no learning-rate search. Picked on the validation split only.",
    )
    search_lora_ranks: list[int] = Field(
        default_factory=list, description="Hyper-parameter search: LoRA ranks to try (lora only), e.g. 4,8,16. Empty: the configured rank."
    )
    search_patience: int = Field(
        2, ge=1, description="Early stopping patience (in evaluations on the validation split) of each search trial."
    )
    max_train_seconds: float | None = Field(
        None, gt=0, description="Recommendation: the best strategy whose train time is at most this many seconds."
    )
    max_memory_mb: float | None = Field(
        None, gt=0, description="Recommendation: the best strategy whose peak memory is at most this many MB."
    )
    concurrency: int = Field(1, ge=1, le=16, description=CONCURRENCY_HELP)

    @model_validator(mode="after")
    def _checks(self) -> "CompareConfig":
        problems = []
        names = [s.name for s in self.strategies]
        if not names:
            problems.append("strategies: give at least one strategy")
        if len(set(names)) != len(names):
            problems.append(f"strategies: each strategy once (got {', '.join(names)})")
        if others := [n for n in names if n not in CLASSIFICATION_STRATEGIES]:
            problems.append(
                f"strategies: compare takes classification strategies ({', '.join(CLASSIFICATION_STRATEGIES)}), not {', '.join(others)}"
            )
        if self.budget_examples and self.budget_seconds:
            problems.append("budget_examples and budget_seconds: give one budget, not both")
        if self.search_enabled() and self.data.validation_fraction == 0:
            problems.append(
                "data.validation_fraction must be above 0 for the search (e.g. --validation-fraction 0.1): "
                "the winner is picked on the validation split, never on the evaluation set"
            )
        if self.search_lora_ranks and "lora" not in names:
            problems.append("search_lora_ranks: lora is not among the strategies")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def search_enabled(self) -> bool:
        return len(self.search_lr_factors) > 1 or len(self.search_lora_ranks) > 1

    def resolved_work_dir(self) -> Path:
        return Path(self.work_dir).expanduser() if self.work_dir else adaptflow_home() / "work"

    def adapt_configs(self) -> list[AdaptConfig]:
        """One adaptation config per strategy: everything shared except the strategy and the registry name."""
        common = self.model_dump(include={"model", "trust_remote_code", "data", "training", "launch", "work_dir"})
        configs = []
        for strategy in self.strategies:
            name = f"{self.registry.model_name}-{strategy.name.replace('_', '-')}"[:63] if self.registry.model_name else None
            registry = {"register_model": self.registry.register_model, "model_name": name}
            configs.append(AdaptConfig.model_validate({**common, "strategy": strategy.model_dump(), "registry": registry}))
        return configs


def load_compare_config(raw: dict[str, Any] | CompareConfig) -> CompareConfig:
    """Validate a (partial) dict into a :class:`CompareConfig`; one ConfigError naming every problem.

    Strict like :func:`adaptflow.tasks.config.load_config`: a field of another strategy is an error.
    """
    return validate_strictly(CompareConfig, raw)


def _updated(cfg: AdaptConfig, training: dict | None = None, strategy: dict | None = None) -> AdaptConfig:
    raw = cfg.model_dump()
    raw["training"].update(training or {})
    raw["strategy"].update(strategy or {})
    return AdaptConfig.model_validate(raw)


# ---- budget ----------------------------------------------------------------------------


def with_budget(cfg: AdaptConfig, cc: CompareConfig, train_rows: int) -> AdaptConfig:
    """The config trained under the comparison's budget.

    Examples budget: every strategy makes the same number of optimizer steps over the
    same sampler order, so each sees the same examples (default: ``epochs`` passes).
    Time budget: the strategy's own schedule, stopped after ``budget_seconds``.
    """
    if cc.budget_seconds:
        return _updated(cfg, {"time_limit_s": cc.budget_seconds, "max_steps": None})
    t = cfg.training
    per_step = t.batch_size * t.gradient_accumulation_steps * cfg.launch.num_processes * cfg.launch.nnodes
    examples = cc.budget_examples or t.epochs * train_rows
    return _updated(cfg, {"max_steps": max(1, math.ceil(examples / per_step))})


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


def search_view(prepared_path: Path, dest: Path) -> Path:
    """A prepared folder holding only the training and validation rows, the validation rows as its 'eval' split.

    Search trials train on this folder, so the evaluation (test) split is not in their
    reach at all: every number a trial reports, and so every choice, comes from the
    validation split. Only the ``train`` and ``validation`` split folders are opened.
    """
    from datasets import DatasetDict, load_from_disk  # datasets loads slowly: imported where prepared data is read

    source = open_prepared(Path(prepared_path), reused=True)
    if (dest / "manifest.json").is_file():
        return dest
    view = DatasetDict(
        {"train": load_from_disk(str(source.dataset_path / "train")), "eval": load_from_disk(str(source.dataset_path / "validation"))}
    )
    view.save_to_disk(str(dest / source.dataset_path.name))
    manifest = {**source.manifest, "search_view_of": str(prepared_path), "splits": {"train": len(view["train"]), "eval": len(view["eval"])}}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


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


def recommend(
    rows: Sequence[dict[str, Any]], max_train_seconds: float | None = None, max_memory_mb: float | None = None, tie: float = TIE_TOLERANCE
) -> dict[str, Any]:
    """The best quality overall, and the best within the given time/memory budget, with the reasons in words."""

    def best_of(candidates):
        return max(candidates, key=lambda r: (r["accuracy"], r["macro_f1"], -r["train_runtime_s"]))

    best = best_of(rows)
    lines = [f"Best quality: **{best['strategy']}** (accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f})."]
    close = [r for r in rows if r is not best and best["accuracy"] - r["accuracy"] <= tie]
    if close:
        cheapest = min([best, *close], key=lambda r: r["train_runtime_s"])
        names = ", ".join(r["strategy"] for r in close)
        lines.append(
            f"Tie: {names} {'is' if len(close) == 1 else 'are'} within {100 * tie:.1f} accuracy points of it, which is within "
            f"the noise of one run; the cheapest of them to train is **{cheapest['strategy']}** ({cheapest['train_runtime_s']:.1f} s)."
        )
    result: dict[str, Any] = {
        "best_quality": best["strategy"],
        "tied_with": [r["strategy"] for r in close],
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
            pick = best_of(fitting)
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


def table_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the results table (Prefect table artifact and the JSON report)."""
    return [
        {
            "strategy": r["strategy"],
            "trainable params": f"{r['trainable_params']:,} ({r['trainable_pct']:.2f}%)",
            "train time (s)": round(r["train_runtime_s"], 1),
            "samples/s": round(r["samples_per_s"], 1),
            "peak memory (MB)": round(r["peak_memory_mb"]),
            "artifact (MB)": round(r["artifact_mb"], 1),
            "accuracy": round(r["accuracy"], 4),
            "macro-F1": round(r["macro_f1"], 4),
            "forgetting": round(r["forgetting"], 4),
            "hyper-parameters": r["hyperparameters"],
        }
        for r in rows
    ]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def report_markdown(report: dict[str, Any], chart_src: str = CHART_FILE) -> str:
    """The whole report for a person: budget, table, search, recommendation, chart.

    ``chart_src`` is the image's source: the chart's file name for ``report.md`` next to it,
    a ``data:`` URI for the Prefect artifact (:func:`adaptflow.tasks.evaluation.classification.png_data_uri`).
    """
    rows = table_rows(report["rows"])
    header = list(rows[0])
    lines = [
        f"# Strategy comparison: {report['model']}",
        "",
        f"Same prepared data (`{report['prepared_data']}`), same evaluation set ({report['eval_rows']} rows), "
        f"same budget: {report['budget']['description']}.",
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


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "x"
