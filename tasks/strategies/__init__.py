"""Adaptation strategies: which parameters train and how the model is wrapped.

A strategy never changes the training loop. It takes the freshly built
:class:`~adaptflow.tasks.modeling.AdaptClassifier` and returns it ready to train; the loop then
optimises whatever has ``requires_grad``. The transfer-learning strategy additionally
says that the backbone is frozen end to end, so the loop may train the head on
features computed once (``uses_cached_features``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from adaptflow.tasks.config import AdaptConfig, Lora, PartialFineTuning
from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.modeling import AdaptClassifier, ModelInfo


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of common encoder and decoder backbones."""
    for path in ("encoder.layer", "layers", "h", "transformer.h", "decoder.layers", "model.layers", "layer"):
        obj = backbone
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ConfigError(
        Problem("strategy", f"cannot find the transformer layers of {type(backbone).__name__}", "use full_fine_tuning or lora for this model")
    )


def _transfer_learning(model: AdaptClassifier, cfg: AdaptConfig) -> AdaptClassifier:
    _freeze(model.backbone)
    model.backbone.eval()
    return model


def _partial_fine_tuning(model: AdaptClassifier, cfg: AdaptConfig) -> AdaptClassifier:
    assert isinstance(cfg.strategy, PartialFineTuning)
    _freeze(model.backbone)
    layers = transformer_layers(model.backbone)
    for layer in layers[len(layers) - cfg.strategy.last_n_layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    # Final norms after the last block (decoders) and the pooler (when it is used) train too.
    for name in ("norm", "ln_f", "final_layer_norm"):
        if isinstance(getattr(model.backbone, name, None), nn.Module):
            for p in getattr(model.backbone, name).parameters():
                p.requires_grad_(True)
    if model.pooling == "pooler" and getattr(model.backbone, "pooler", None) is not None:
        for p in model.backbone.pooler.parameters():
            p.requires_grad_(True)
    return model


def _full_fine_tuning(model: AdaptClassifier, cfg: AdaptConfig) -> AdaptClassifier:
    for p in model.parameters():
        p.requires_grad_(True)
    for name in model.unused_module_names():
        _freeze(model.backbone.get_submodule(name))
    return model


def _lora(model: AdaptClassifier, cfg: AdaptConfig) -> AdaptClassifier:
    from peft import LoraConfig, get_peft_model

    assert isinstance(cfg.strategy, Lora)
    s = cfg.strategy
    lora_config = LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=s.lora_target_modules or "all-linear",
        exclude_modules=[f"{name}.dense" for name in model.unused_module_names()] or None,
        bias="none",
    )
    model.backbone = get_peft_model(model.backbone, lora_config)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _lm_full(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    _set_trainable(model, True)
    return model


def _lm_partial(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    assert isinstance(cfg.strategy, PartialFineTuning)
    _set_trainable(model, False)
    layers = transformer_layers(model.base_model)
    for layer in layers[len(layers) - cfg.strategy.last_n_layers :]:
        _set_trainable(layer, True)
    for name in ("norm", "ln_f", "final_layer_norm"):
        if isinstance(getattr(model.base_model, name, None), nn.Module):
            _set_trainable(getattr(model.base_model, name), True)
    return model


def _lm_head_only(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    """transfer_learning for a causal LM: the body is frozen; the output head (and the input
    embeddings, which most decoders tie to it) train."""
    _set_trainable(model, False)
    for module in (model.get_output_embeddings(), model.get_input_embeddings()):
        if module is not None:
            _set_trainable(module, True)
    return model


def _lm_lora(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    assert isinstance(cfg.strategy, Lora)
    s = cfg.strategy
    if s.qlora:
        model = prepare_model_for_kbit_training(model)
    lora_config = LoraConfig(
        task_type="CAUSAL_LM", r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
        target_modules=s.lora_target_modules or "all-linear", bias="none",
    )
    return get_peft_model(model, lora_config)





@dataclass(frozen=True)
class Strategy:
    name: str
    configure_classifier: Callable[[AdaptClassifier, AdaptConfig], AdaptClassifier]
    configure_decoder: Callable[[nn.Module, AdaptConfig], nn.Module]
    uses_cached_features: bool = False
    """The backbone is frozen and deterministic: features are computed once and cached."""


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("transfer_learning", _transfer_learning, _lm_head_only, uses_cached_features=True),
        Strategy("partial_fine_tuning", _partial_fine_tuning, _lm_partial),
        Strategy("full_fine_tuning", _full_fine_tuning, _lm_full),
        Strategy("lora", _lora, _lm_lora),
        Strategy("domain_adaptation", _full_fine_tuning, _lm_full),
    )
}


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]


def check_against_model(cfg: AdaptConfig, info: ModelInfo) -> list[Problem]:
    """Problems of the configuration that only show once the base model is known."""
    problems = []
    s = cfg.strategy
    if isinstance(s, PartialFineTuning) and info.num_layers and s.last_n_layers > info.num_layers:
        problems.append(
            Problem(
                "strategy.last_n_layers",
                f"is {s.last_n_layers} but the model has only {info.num_layers} layers",
                f"use 1..{info.num_layers}, or full_fine_tuning to train every layer",
            )
        )
    if info.max_positions and cfg.data.max_length > info.max_positions:
        problems.append(
            Problem("data.max_length", f"is {cfg.data.max_length} but the model reads at most {info.max_positions} tokens", f"use at most {info.max_positions}")
        )
    pooling = info.resolve_pooling(s.pooling)
    if pooling == "last" and not info.is_decoder:
        problems.append(Problem("strategy.pooling", "'last' is meant for decoder models", "use 'mean' or 'cls' for encoders"))
    if pooling == "pooler" and info.is_decoder:
        problems.append(Problem("strategy.pooling", "decoder models have no pooler layer", "use 'last' or 'mean'"))
    return problems
