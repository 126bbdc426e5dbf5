"""Adaptation strategies: which parameters train and how the model is wrapped.

One module per strategy (its parameters, how it configures an encoder classifier and a
decoder, its checks; see :mod:`adaptflow.tasks.strategies.base`), listed once below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Callable, Union

from pydantic import Field

from adaptflow.tasks.errors import Problem
from adaptflow.tasks.strategies import domain_adaptation, full_fine_tuning, lora, partial_fine_tuning, transfer_learning
from adaptflow.tasks.strategies.base import POOLING_HELP, REGISTRY, STRICT, Pooling, Strategy, StrategyParams, strategy_fields
from adaptflow.tasks.strategies.domain_adaptation import DomainAdaptation, TaskStrategyName
from adaptflow.tasks.strategies.full_fine_tuning import FullFineTuning
from adaptflow.tasks.strategies.lora import Lora
from adaptflow.tasks.strategies.partial_fine_tuning import PartialFineTuning
from adaptflow.tasks.strategies.transfer_learning import TransferLearning

if TYPE_CHECKING:
    from adaptflow.tasks.base_model import ModelInfo
    from adaptflow.tasks.config import AdaptConfig

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        transfer_learning.STRATEGY,
        partial_fine_tuning.STRATEGY,
        full_fine_tuning.STRATEGY,
        lora.STRATEGY,
        domain_adaptation.STRATEGY,
    )
}
"""Every strategy by name, in the order of the strategy tabs in the Prefect form and of ``--strategy`` choices."""
assert set(STRATEGIES) == set(REGISTRY), "a strategy module is registered but not listed here"
STRATEGY_CLASSES: dict[str, type[StrategyParams]] = {name: s.params for name, s in STRATEGIES.items()}
STRATEGY_NAMES = tuple(STRATEGIES)
STRATEGY_FIELDS = strategy_fields()
TASK_STRATEGY_NAMES: tuple[str, ...] = tuple(name for name, s in STRATEGIES.items() if s.trains_task)
"""The strategies that train a task model (every one but domain_adaptation): what benchmarks compare."""

StrategyConfig = Annotated[Union[tuple(STRATEGY_CLASSES.values())], Field(discriminator="name")]
"""The ``strategy`` section of a config: one strategy's parameters, chosen by ``name``."""


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]


def check_config(cfg: "AdaptConfig", cuda_available: Callable[[], bool]) -> list[str]:
    """Problems of the configuration that concern its strategy."""
    return get_strategy(cfg.strategy.name).check_config(cfg, cuda_available)


def check_against_model(cfg: "AdaptConfig", info: "ModelInfo") -> list[Problem]:
    """Problems of the configuration that only show once the base model is known."""
    problems = list(get_strategy(cfg.strategy.name).check_model(cfg, info))
    if info.max_positions and cfg.data.max_length > info.max_positions:
        problems.append(
            Problem(
                "data.max_length",
                f"is {cfg.data.max_length} but the model reads at most {info.max_positions} tokens",
                f"use at most {info.max_positions}",
            )
        )
    pooling = info.resolve_pooling(cfg.strategy.pooling)
    if pooling == "last" and not info.is_decoder:
        problems.append(Problem("strategy.pooling", "'last' is meant for decoder models", "use 'mean' or 'cls' for encoders"))
    if pooling == "pooler" and info.is_decoder:
        problems.append(Problem("strategy.pooling", "decoder models have no pooler layer", "use 'last' or 'mean'"))
    return problems


__all__ = [
    "POOLING_HELP",
    "STRATEGIES",
    "STRATEGY_CLASSES",
    "STRATEGY_FIELDS",
    "STRATEGY_NAMES",
    "STRICT",
    "TASK_STRATEGY_NAMES",
    "DomainAdaptation",
    "FullFineTuning",
    "Lora",
    "PartialFineTuning",
    "Pooling",
    "Strategy",
    "StrategyConfig",
    "StrategyParams",
    "TaskStrategyName",
    "TransferLearning",
    "check_against_model",
    "check_config",
    "get_strategy",
    "transfer_learning",
    "partial_fine_tuning",
    "full_fine_tuning",
    "lora",
    "domain_adaptation",
]
