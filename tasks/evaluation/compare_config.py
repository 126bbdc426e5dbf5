"""The compare configuration: which strategies run on which data and budget, and its constants.

Read by the CLI before any heavy work, so it imports nothing but the config models
(no numpy, matplotlib, torch or Prefect). The rest of compare: ``compare.py`` (budget,
estimates, search, statistics, curves and plots) and ``compare_report.py`` (the tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

CLASSIFICATION_STRATEGIES = TASK_STRATEGY_NAMES  # domain adaptation is a first stage, not a strategy to compare
REPORT_FILE = "compare_report.json"
CHART_FILE = "quality_vs_cost.png"
SEARCH_DATA = "search_data"
CONCURRENCY_HELP = (
    "Strategies trained at the same time. 1 on CPU: parallel trainings fight for the same cores and "
    "memory bandwidth, which distorts the time and samples/s being compared. Raise it with one GPU per training."
)
CURVES_FILE = "learning_curves.png"
CURVE_POINTS = 5  # validation evaluations per strategy under an examples budget
SIGNIFICANCE = 0.05  # a difference whose paired-test p-value is at least this is called a tie
BOOTSTRAP_RESAMPLES = 1000
CURVE_VALIDATION_ROWS = 500  # validation rows the learning curves are measured on (a seeded sample)
CURVE_DATA = "curve_data"
COMPARE_VALIDATION_FRACTION = 0.1  # training rows held out for the learning curves unless the data section says otherwise


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
    data: DataConfig = shared_field(
        "data",
        default_factory=lambda: DataConfig(validation_fraction=COMPARE_VALIDATION_FRACTION),
        description="The task data, prepared once for every strategy. The learning curves are measured on the "
        f"validation split (validation_fraction, {COMPARE_VALIDATION_FRACTION} by default here), never on the evaluation set.",
    )
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
        description="Examples through the backbone's forward pass in training, the same count for every strategy: "
        "fine-tuning strategies train on the same examples in the same seeded order; transfer learning's backbone "
        "runs once over the training rows and its head then makes its `head_epochs` passes over the cached features "
        "(no backbone cost). Empty: `budget_passes` passes.",
    )
    budget_passes: int | None = Field(
        None,
        ge=1,
        description="Passes over the training rows through the backbone, the same for every strategy (the examples "
        "budget of passes x training rows). Empty: `epochs`.",
    )
    budget_seconds: float | None = Field(
        None,
        gt=0,
        description="Instead of an examples budget: each strategy trains with its own schedule (transfer learning "
        "makes its `head_epochs` passes) and stops after this many seconds of training.",
    )
    seeds: int = Field(
        1, ge=1, le=20, description="Train every strategy this many times (seeds seed, seed+1, ...); the report gives mean +- sd."
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

    @model_validator(mode="before")
    @classmethod
    def _validation_split_by_default(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict) and "validation_fraction" not in raw["data"]:
            return {**raw, "data": {**raw["data"], "validation_fraction": COMPARE_VALIDATION_FRACTION}}
        return raw

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
        if sum(b is not None for b in (self.budget_examples, self.budget_passes, self.budget_seconds)) > 1:
            problems.append("budget_examples, budget_passes and budget_seconds: give one budget, not several")
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


GPU_PEAK_TFLOPS = {  # published dense bf16 (T4: fp16) peaks, TFLOP/s
    "t4": 65.0,
    "l4": 121.0,
    "a10": 125.0,
    "a100": 312.0,
    "h100": 989.0,
    "h200": 989.0,
}
GPU_UTILISATION = 0.3  # the share of the peak assumed reached: a projection, not a measurement
