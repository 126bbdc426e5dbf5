"""LoRA (PEFT): the base model stays frozen; low-rank adapters train (and the task head,
saved with them). QLoRA loads the frozen base in 4 bits first (causal LM, CUDA only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Literal

from pydantic import Field

from adaptflow.tasks.strategies.base import Strategy, StrategyParams, register, set_trainable

if TYPE_CHECKING:
    from torch import nn

    from adaptflow.tasks.config import AdaptConfig
    from adaptflow.tasks.modeling import AdaptClassifier


class Lora(StrategyParams):
    """Frozen base, low-rank adapters (PEFT LoRA); the head trains and is saved with them."""

    default_learning_rate: ClassVar[float] = 1e-3
    name: Literal["lora"] = "lora"
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank: size of the low-rank update matrices.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha/r).")
    lora_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the LoRA input. 0 (PEFT's default): above 0 every adapted layer keeps a dropped-out copy "
        "of its input for the backward pass (bench/lora_cost.py: 6% more peak memory on CPU, no better accuracy).",
    )
    lora_target_modules: list[str] | None = Field(
        None,
        description="Names of the linear layers that get adapters (e.g. query,key,value,dense). "
        "Empty: every linear layer of the backbone (PEFT's 'all-linear'). query,value (attention only) takes about 28% "
        "less peak memory on CPU with 4.5x fewer trainable parameters (bench/lora_cost.py).",
    )
    qlora: bool = Field(
        False,
        description="QLoRA: load the frozen base in 4 bits (bitsandbytes NF4) and train LoRA adapters on it. "
        "Needs a CUDA GPU and the bitsandbytes package; causal_lm task only.",
    )


def configure_classifier(model: "AdaptClassifier", cfg: "AdaptConfig") -> "AdaptClassifier":
    from peft import LoraConfig, get_peft_model  # peft loads slowly: only runs that use LoRA pay for it

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
    set_trainable(model.head, True)
    return model


def configure_decoder(model: nn.Module, cfg: "AdaptConfig") -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # slow import, see above

    s = cfg.strategy
    if s.qlora:
        model = prepare_model_for_kbit_training(model)
    lora_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=s.lora_target_modules or "all-linear",
        bias="none",
    )
    return get_peft_model(model, lora_config)


def check_config(cfg: "AdaptConfig", cuda_available: Callable[[], bool]) -> list[str]:
    problems = []
    if cfg.strategy.qlora:
        if cfg.task != "causal_lm":
            problems.append("strategy.qlora (--qlora) is for --task causal_lm only")
        if not cuda_available():
            problems.append("strategy.qlora (--qlora) needs a CUDA GPU (4-bit bitsandbytes kernels); on CPU use plain lora (--no-qlora)")
    return problems


STRATEGY = register(Strategy("lora", Lora, configure_classifier, configure_decoder, check_config=check_config))
