"""Transfer learning: the pre-trained backbone is frozen and a new task head trains.

The backbone is frozen end to end and deterministic, so the loop computes its features
once and trains the head on them (``uses_cached_features``), which makes many passes cheap.
For a decoder language model the body is frozen and the output head trains (with the input
embeddings, which most decoders tie to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from adaptflow.tasks.strategies.base import Strategy, StrategyParams, register, set_trainable

if TYPE_CHECKING:
    from torch import nn

    from adaptflow.tasks.config import AdaptConfig, TrainingConfig
    from adaptflow.tasks.modeling import AdaptClassifier


class TransferLearning(StrategyParams):
    """Frozen pre-trained backbone, new task head trained on features computed once."""

    default_learning_rate: ClassVar[float] = 2e-3
    name: Literal["transfer_learning"] = "transfer_learning"
    head_epochs: int = Field(
        20,
        ge=1,
        le=10000,
        description="Passes of the head over the cached features. They are cheap (the backbone runs "
        "once over the data), so this replaces training.epochs for this strategy.",
    )

    def passes(self, training: "TrainingConfig") -> int:
        return self.head_epochs


def configure_classifier(model: "AdaptClassifier", cfg: "AdaptConfig") -> "AdaptClassifier":
    set_trainable(model.backbone, False)
    model.backbone.eval()
    return model


def configure_decoder(model: nn.Module, cfg: "AdaptConfig") -> nn.Module:
    set_trainable(model, False)
    for module in (model.get_output_embeddings(), model.get_input_embeddings()):
        if module is not None:
            set_trainable(module, True)
    return model


STRATEGY = register(Strategy("transfer_learning", TransferLearning, configure_classifier, configure_decoder, uses_cached_features=True))
