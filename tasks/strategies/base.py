"""What every strategy is made of, and the registry that finds them.

A strategy is one module in this package holding three things:

- its parameters: a frozen pydantic model (a subclass of :class:`StrategyParams`), which
  is the ``strategy`` section of :class:`~adaptflow.tasks.config.AdaptConfig`, chosen by
  ``name``;
- how it prepares a model to train: ``configure_classifier`` for the encoder classifier
  (:class:`~adaptflow.tasks.modeling.AdaptClassifier`) and ``configure_decoder`` for a
  Hugging Face language model (domain adaptation, causal LM). Either returns the model
  with the right parameters trainable; the one training loop then optimises whatever has
  ``requires_grad``. A strategy never forks the loop;
- its checks: of the configuration alone (``check_config``) and against the base model
  once it is known (``check_model``), returned as problems so all are reported at once.

The module ends with ``STRATEGY = register(Strategy(...))``; :mod:`adaptflow.tasks.strategies`
lists every strategy module, so adding a strategy is one new module plus one line there.

This package sits below the config and the model code: it imports neither (the config
and model objects it is handed are only named for type checkers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from adaptflow.tasks.errors import ConfigError, Problem

if TYPE_CHECKING:
    from torch import nn

    from adaptflow.tasks.base_model import ModelInfo
    from adaptflow.tasks.config import AdaptConfig, TrainingConfig
    from adaptflow.tasks.modeling import AdaptClassifier

STRICT = "strict"
"""Validation context key: fields of another strategy are an error instead of being dropped."""

Pooling = Literal["auto", "mean", "cls", "pooler", "last"]
POOLING_HELP = (
    "How token states become one vector for the head: 'mean' (average of tokens), "
    "'cls' (first token), 'pooler' (the model's own pooler layer), 'last' (last real "
    "token, for decoders), or 'auto' (the checkpoint's sentence-transformers pooling if "
    "it has one, 'last' for decoder models, else 'mean')."
)


@dataclass(frozen=True)
class Strategy:
    """One registered strategy."""

    name: str
    params: type["StrategyParams"]
    configure_classifier: Callable[["AdaptClassifier", "AdaptConfig"], "AdaptClassifier"]
    configure_decoder: Callable[["nn.Module", "AdaptConfig"], "nn.Module"]
    check_config: Callable[["AdaptConfig", Callable[[], bool]], list[str]] = lambda cfg, cuda_available: []
    """Problems of the whole configuration that concern this strategy (messages naming their fields);
    the second argument says whether a CUDA GPU is there (asked only when a check needs it)."""
    check_model: Callable[["AdaptConfig", "ModelInfo"], list[Problem]] = lambda cfg, info: []
    """Problems that only show once the base model is known."""
    uses_cached_features: bool = False
    """The backbone is frozen and deterministic: features are computed once and cached."""
    trains_task: bool = True
    """It trains a task model (every strategy but domain adaptation, a first stage): what compare compares."""


REGISTRY: dict[str, Strategy] = {}
"""Every strategy module's strategy, by name (:data:`adaptflow.tasks.strategies.STRATEGIES` gives their order)."""


def register(strategy: Strategy) -> Strategy:
    if strategy.params.model_fields["name"].default != strategy.name:
        raise ValueError(f"strategy {strategy.name}: its params' name field must default to {strategy.name!r}")
    REGISTRY[strategy.name] = strategy
    return strategy


def strategy_fields() -> frozenset[str]:
    """Every field of every registered strategy's parameters."""
    return frozenset(field for s in REGISTRY.values() for field in s.params.model_fields)


def _json_schema(schema: dict[str, Any]) -> None:
    """A strategy's JSON schema (the Prefect server validates runs with it): fields of any strategy, nothing else.

    Replaces ``additionalProperties: false``: the Prefect form keeps the previous tab's
    values when the strategy tab changes and submits them too.
    """
    schema.pop("additionalProperties", None)
    schema["propertyNames"] = {"enum": sorted(strategy_fields())}


class StrategyParams(BaseModel):
    """Parameters shared by every strategy."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_json_schema)

    default_learning_rate: ClassVar[float]
    pooling: Pooling = Field("auto", description=POOLING_HELP)

    @model_validator(mode="before")
    @classmethod
    def _drop_other_strategies_fields(cls, data: Any, info: ValidationInfo) -> Any:
        """Fields of another strategy are dropped, except in strict validation (``load_config``)."""
        if not isinstance(data, dict) or (info.context or {}).get(STRICT):
            return data
        others = strategy_fields()
        return {key: value for key, value in data.items() if key in cls.model_fields or key not in others}

    def passes(self, training: "TrainingConfig") -> int:
        """Passes over the training data the loop makes."""
        return training.epochs


# ---- helpers the strategy modules share ----------------------------------------------------


def set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


FINAL_NORMS = ("norm", "ln_f", "final_layer_norm")
"""Names of the norm after the last transformer block (decoders), which trains with the top layers."""


def final_norms(backbone: nn.Module) -> list[nn.Module]:
    from torch import nn  # torch loads in seconds; the config (and the CLI's --help) reads this package without it

    return [m for m in (getattr(backbone, name, None) for name in FINAL_NORMS) if isinstance(m, nn.Module)]


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of common encoder and decoder backbones."""
    from torch import nn  # see final_norms

    for path in ("encoder.layer", "layers", "h", "transformer.h", "decoder.layers", "model.layers", "layer"):
        obj = backbone
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ConfigError(
        Problem(
            "strategy", f"cannot find the transformer layers of {type(backbone).__name__}", "use full_fine_tuning or lora for this model"
        )
    )
