"""What a training costs: its time as the compare table counts it, its FLOPs, and their projection on a GPU.

Plain functions of a run's config and metrics, with no Prefect and no evaluation code, so a
bare GPU machine can import them (``bench/gpu_check.py`` holds a measured run against the
projection). ``flows/compare.py`` and ``tasks/evaluation/compare.py`` use them for
``adaptflow compare --estimate`` and the budget.

Rules:

- a training's time is its loop without the learning curves' evaluations, plus transfer
  learning's feature pass;
- FLOPs per trained token are ``4 x parameters + 2 x trainable parameters`` (forward, activation
  gradients, weight gradients), over the real (unpadded) tokens of the prepared data; transfer
  learning costs one forward pass over every split's rows;
- a GPU projection assumes ``GPU_UTILISATION`` of the card's published dense bf16 peak
  (``GPU_PEAK_TFLOPS``, in compare_config.py with the rest of compare's constants): it is a
  projection, never a measurement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adaptflow.tasks.evaluation.compare_config import GPU_PEAK_TFLOPS, GPU_UTILISATION
from adaptflow.tasks.strategies import get_strategy

if TYPE_CHECKING:
    from adaptflow.tasks.config import AdaptConfig


def examples_per_step(cfg: "AdaptConfig") -> int:
    """Training examples behind one optimizer step, over every process and node."""
    t = cfg.training
    return t.batch_size * t.gradient_accumulation_steps * cfg.launch.num_processes * cfg.launch.nnodes


def training_seconds(metrics: dict[str, Any]) -> float:
    """A training's time in the table: its loop without the learning curves' validation evaluations, plus transfer
    learning's feature pass (which also covers the validation and evaluation rows)."""
    return metrics["train_runtime_s"] - metrics.get("eval_time_s", 0.0)


def training_flops(cfg: "AdaptConfig", trainable: int, total: int, mean_tokens: dict[str, float], rows: dict[str, int]) -> float:
    """FLOPs of a strategy's training under the budget (``cfg`` with ``max_steps`` set, as compare's ``with_budget`` makes it).

    Per token: 2 x parameters forward; backward 2 x parameters (activation gradients, an
    upper bound for partial fine-tuning) plus 2 x trainable parameters (weight gradients).
    Transfer learning: one forward pass over every split's rows (its head is negligible).
    ``mean_tokens``: tokens per row of each split (the prepared data's manifest).
    """
    if get_strategy(cfg.strategy.name).uses_cached_features:
        return 2.0 * total * sum(mean_tokens[split] * n for split, n in rows.items())
    trained_rows = (cfg.training.max_steps or 0) * examples_per_step(cfg)
    return (4.0 * total + 2.0 * trainable) * trained_rows * mean_tokens["train"]


def gpu_seconds(flops: float, gpu: str, utilisation: float = GPU_UTILISATION) -> float:
    """A projection: ``flops`` at ``utilisation`` of the GPU's published peak."""
    return flops / (GPU_PEAK_TFLOPS[gpu] * 1e12 * utilisation)
