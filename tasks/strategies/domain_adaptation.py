"""Domain adaptation: continued pre-training on unlabelled domain text (masked LM for
encoders, causal LM for decoders), every weight updated; optionally followed, in the same
run, by a task strategy (``then``) on labelled data, starting from the adapted model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Literal

from pydantic import Field

from adaptflow.tasks.strategies import full_fine_tuning, lora, partial_fine_tuning, transfer_learning
from adaptflow.tasks.strategies.base import Strategy, StrategyParams, register

if TYPE_CHECKING:
    from adaptflow.tasks.config import AdaptConfig, TrainingConfig

TaskStrategyName = Literal[
    transfer_learning.STRATEGY.name, partial_fine_tuning.STRATEGY.name, full_fine_tuning.STRATEGY.name, lora.STRATEGY.name
]


class DomainAdaptation(StrategyParams):
    """Continued pre-training on unlabelled domain text (masked LM for encoders, causal LM for decoders),
    then optionally a task strategy on labelled data in the same run."""

    default_learning_rate: ClassVar[float] = 5e-5
    name: Literal["domain_adaptation"] = "domain_adaptation"
    then: TaskStrategyName | None = Field(
        None,
        description="Task strategy to run on the domain-adapted model afterwards (with task_data), using its "
        "default parameters. Empty: stop after continued pre-training.",
    )
    task_data: str | None = Field(None, description="Labelled task data for the `then` strategy (same forms as `data`).")
    task_eval_data: str | None = Field(None, description="Evaluation data for the `then` strategy; empty: a held-out share of task_data.")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens masked for masked-LM training (encoder models).")
    domain_epochs: int = Field(1, ge=1, le=1000, description="Passes over the domain text (ignored when domain_max_steps is set).")
    domain_max_steps: int | None = Field(None, ge=1, description="Stop continued pre-training after this many optimizer steps.")
    domain_learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of continued pre-training.")

    def passes(self, training: "TrainingConfig") -> int:
        return self.domain_epochs


def check_config(cfg: "AdaptConfig", cuda_available: Callable[[], bool]) -> list[str]:
    s = cfg.strategy
    problems = []
    if s.then and not s.task_data:
        problems.append("strategy.then (--then) needs strategy.task_data (--task-data): the labelled data for the task")
    if (s.task_data or s.task_eval_data) and not s.then:
        problems.append("strategy.task_data (--task-data) needs strategy.then (--then): the task strategy to run on it")
    if s.then and cfg.task == "causal_lm":
        problems.append(
            "task 'causal_lm' after domain_adaptation is not supported in one run: adapt first, then run "
            "--task causal_lm with --model set to the adapted model folder"
        )
    return problems


# Continued pre-training updates every weight, as full fine-tuning does.
STRATEGY = register(
    Strategy(
        "domain_adaptation",
        DomainAdaptation,
        full_fine_tuning.configure_classifier,
        full_fine_tuning.configure_decoder,
        check_config=check_config,
        trains_task=False,
    )
)
