"""One parameterized flow per adaptation strategy.

Each flow has the strategy's own parameters as a form section (no strategy dropdown to
contradict the flow's name) and runs the same pipeline as ``adapt``.
"""

from __future__ import annotations

import inspect
from typing import Literal

from prefect import Flow, flow

from adaptflow.flows.adapt import run_pipeline
from adaptflow.tasks.config import (
    DEFAULT_MODEL,
    STRATEGY_CLASSES,
    STRATEGY_NAMES,
    AdaptConfig,
    DataConfig,
    LanguageModelConfig,
    LaunchConfig,
    RegistryConfig,
    TrainingConfig,
    load_config,
)


def _strategy_flow(name: str) -> Flow:
    strategy_cls = STRATEGY_CLASSES[name]

    def strategy_flow(
        model: str = DEFAULT_MODEL,
        strategy=strategy_cls(),
        data: DataConfig = DataConfig(),
        training: TrainingConfig = TrainingConfig(),
        launch: LaunchConfig = LaunchConfig(),
        registry: RegistryConfig = RegistryConfig(),
        lm: LanguageModelConfig = LanguageModelConfig(),  # read by causal_lm and domain adaptation runs only
        work_dir: str | None = None,
        task: Literal["classification", "causal_lm"] = "classification",
    ) -> dict:
        cfg = load_config(
            {
                "model": model,
                "task": task,
                "strategy": strategy,
                "data": data,
                "training": training,
                "launch": launch,
                "registry": registry,
                "lm": lm,
                "work_dir": work_dir,
            }
        )
        return run_pipeline(cfg)

    # The annotation drives the parameter schema, so the UI shows this strategy's fields.
    strategy_flow.__annotations__["strategy"] = strategy_cls
    strategy_flow.__name__ = name
    strategy_flow.__qualname__ = name
    summary = f"{strategy_cls.__doc__.strip()} Prepare, train, evaluate and register."
    strategy_flow.__doc__ = summary + _args_section(strategy_flow)  # Prefect reads the Args into the UI form's descriptions
    return flow(name=name.replace("_", "-"), description=summary)(strategy_flow)


def _args_section(function) -> str:
    """A Google-style ``Args:`` section from the config model's field descriptions."""
    lines = ["", "", "Args:"]
    for param in inspect.signature(function).parameters:
        field = AdaptConfig.model_fields.get(param)
        if field is not None and field.description:
            lines.append(f"    {param}: {' '.join(field.description.split())}")
    return "\n".join(lines)


# One flow per registered strategy, named after it (deployments/prefect.yaml points at
# flows/strategies.py:<strategy name>); a new strategy module gets its flow here unasked.
for _name in STRATEGY_NAMES:
    globals()[_name] = _strategy_flow(_name)
