"""Partial fine-tuning: embeddings and early layers stay frozen; the last N transformer
layers (with the final norm, the pooler when it is used, and the head) train."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from adaptflow.tasks.errors import Problem
from adaptflow.tasks.strategies.base import Strategy, StrategyParams, final_norms, register, set_trainable, transformer_layers

if TYPE_CHECKING:
    from torch import nn

    from adaptflow.tasks.base_model import ModelInfo
    from adaptflow.tasks.config import AdaptConfig
    from adaptflow.tasks.modeling import AdaptClassifier


class PartialFineTuning(StrategyParams):
    """Embeddings and early layers frozen; the last N layers and the head train."""

    # Defaults measured on SST-2 with MiniLM (8,000 examples, 1 pass; bench/quality.py): partial 1e-4 -> 83.0%,
    # 5e-4 -> 85.4%; full: mean of seeds 42/1/2 at 1e-4 86.5%, at 1.5e-4 86.1%; lora: 1e-3 84.9%, 2e-3 84.3%.
    default_learning_rate: ClassVar[float] = 5e-4
    name: Literal["partial_fine_tuning"] = "partial_fine_tuning"
    last_n_layers: int = Field(2, ge=1, description="How many of the last transformer layers train (with the head).")


def _train_top(backbone: nn.Module, last_n_layers: int) -> None:
    """Freeze ``backbone``, then unfreeze its last ``last_n_layers`` blocks and the norm after them."""
    set_trainable(backbone, False)
    layers = transformer_layers(backbone)
    for layer in layers[len(layers) - last_n_layers :]:
        set_trainable(layer, True)
    for norm in final_norms(backbone):
        set_trainable(norm, True)


def configure_classifier(model: "AdaptClassifier", cfg: "AdaptConfig") -> "AdaptClassifier":
    _train_top(model.backbone, cfg.strategy.last_n_layers)
    if model.pooling == "pooler" and getattr(model.backbone, "pooler", None) is not None:
        set_trainable(model.backbone.pooler, True)
    return model


def configure_decoder(model: nn.Module, cfg: "AdaptConfig") -> nn.Module:
    set_trainable(model, False)  # the output head too: only the top blocks train
    _train_top(model.base_model, cfg.strategy.last_n_layers)
    return model


def check_model(cfg: "AdaptConfig", info: "ModelInfo") -> list[Problem]:
    n = cfg.strategy.last_n_layers
    if info.num_layers and n > info.num_layers:
        return [
            Problem(
                "strategy.last_n_layers",
                f"is {n} but the model has only {info.num_layers} layers",
                f"use 1..{info.num_layers}, or full_fine_tuning to train every layer",
            )
        ]
    return []


STRATEGY = register(Strategy("partial_fine_tuning", PartialFineTuning, configure_classifier, configure_decoder, check_model=check_model))
