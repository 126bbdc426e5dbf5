"""Full fine-tuning: every parameter the forward pass uses trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from adaptflow.tasks.strategies.base import Strategy, StrategyParams, register, set_trainable

if TYPE_CHECKING:
    from torch import nn

    from adaptflow.tasks.config import AdaptConfig
    from adaptflow.tasks.modeling import AdaptClassifier


class FullFineTuning(StrategyParams):
    """Every parameter trains."""

    default_learning_rate: ClassVar[float] = 1e-4
    name: Literal["full_fine_tuning"] = "full_fine_tuning"


def configure_classifier(model: "AdaptClassifier", cfg: "AdaptConfig") -> "AdaptClassifier":
    set_trainable(model, True)
    for name in model.unused_module_names():  # e.g. the pooler under mean pooling: no gradient would reach it
        set_trainable(model.backbone.get_submodule(name), False)
    return model


def configure_decoder(model: nn.Module, cfg: "AdaptConfig") -> nn.Module:
    set_trainable(model, True)
    return model


STRATEGY = register(Strategy("full_fine_tuning", FullFineTuning, configure_classifier, configure_decoder))
