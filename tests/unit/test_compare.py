"""Compare report logic: budget, grid, Pareto front, recommendation, config checks."""

from __future__ import annotations

import pytest

from adaptflow.tasks.errors import ConfigError
from adaptflow.tasks.evaluation.compare import (
    final_config,
    grid,
    load_compare_config,
    pareto_front,
    pick_best,
    recommend,
    trial_config,
    with_budget,
)


def _row(name, acc, time_s, mem, f1=None):
    return {"strategy": name, "accuracy": acc, "macro_f1": acc if f1 is None else f1, "train_runtime_s": time_s, "peak_memory_mb": mem}


ROWS = [
    _row("transfer_learning", 0.78, 10, 700),
    _row("partial_fine_tuning", 0.77, 17, 990),
    _row("full_fine_tuning", 0.82, 33, 1500),
    _row("lora", 0.80, 31, 1900),
]


def test_pareto_front_keeps_only_undominated_points():
    assert pareto_front(ROWS, "train_runtime_s") == [True, False, True, True]  # partial: slower and worse than transfer
    assert pareto_front(ROWS, "peak_memory_mb") == [True, False, True, False]  # lora: more memory and worse than full
    assert pareto_front([_row("a", 0.8, 10, 1), _row("b", 0.8, 10, 1)], "train_runtime_s") == [True, True]  # equal: neither dominates


def test_recommendation_best_overall_and_within_budget():
    rec = recommend(ROWS, max_train_seconds=20)
    assert rec["best_quality"] == "full_fine_tuning" and rec["within_budget"] == "transfer_learning"
    assert rec["tied_with"] == []
    rec = recommend(ROWS, max_memory_mb=1000)
    assert rec["within_budget"] == "transfer_learning"


def test_recommendation_explains_ties_and_an_impossible_budget():
    rows = [_row("lora", 0.801, 31, 1900), _row("full_fine_tuning", 0.799, 33, 1500), _row("transfer_learning", 0.70, 10, 700)]
    rec = recommend(rows, max_train_seconds=1)
    assert rec["best_quality"] == "lora" and rec["tied_with"] == ["full_fine_tuning"]
    assert rec["within_budget"] is None
    text = " ".join(rec["text"])
    assert "Tie" in text and "Nothing fits" in text and "transfer_learning (10.0 s)" in text


def test_examples_budget_gives_every_strategy_the_same_steps():
    cc = load_compare_config({"training": {"batch_size": 8}, "budget_examples": 100})
    steps = {cfg.strategy.name: with_budget(cfg, cc, train_rows=1000).training.max_steps for cfg in cc.adapt_configs()}
    assert set(steps) == {"transfer_learning", "partial_fine_tuning", "full_fine_tuning", "lora"} and set(steps.values()) == {13}
    default = load_compare_config({"training": {"batch_size": 32, "epochs": 2}})
    assert {with_budget(c, default, train_rows=320).training.max_steps for c in default.adapt_configs()} == {20}
    timed = load_compare_config({"budget_seconds": 30})
    assert all(with_budget(c, timed, 320).training.time_limit_s == 30 for c in timed.adapt_configs())


def test_grid_and_trials():
    cc = load_compare_config({"data": {"validation_fraction": 0.1}, "search_lr_factors": [0.5, 2], "search_lora_ranks": [4, 8]})
    by_name = {c.strategy.name: c for c in cc.adapt_configs()}
    base = by_name["full_fine_tuning"].learning_rate()
    assert grid(by_name["full_fine_tuning"], cc) == [{"learning_rate": 0.5 * base}, {"learning_rate": 2 * base}]
    assert len(grid(by_name["lora"], cc)) == 4
    trial = trial_config(with_budget(by_name["lora"], cc, 800), {"learning_rate": 1e-3, "lora_r": 4}, patience=2)
    assert trial.strategy.lora_r == 4 and trial.training.early_stopping_patience == 2 and trial.training.eval_every == 3
    assert not trial.registry.register_model
    best = pick_best(
        [{"validation_loss": 0.5, "validation_accuracy": 0.7, "n": 1}, {"validation_loss": 0.4, "validation_accuracy": 0.6, "n": 2}]
    )
    assert best["n"] == 2


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        load_compare_config(
            {"strategies": [{"name": "lora"}, {"name": "lora"}], "budget_examples": 10, "budget_seconds": 5, "search_lr_factors": [1, 2]}
        )
    text = str(err.value)
    assert "each strategy once" in text and "one budget" in text and "validation_fraction" in text


def test_final_run_uses_the_winning_point_without_the_trial_settings():
    cc = load_compare_config({"strategies": [{"name": "lora"}]})
    (lora,) = cc.adapt_configs()
    final = final_config(lora, {"learning_rate": 5e-4, "lora_r": 16})
    assert final.learning_rate() == 5e-4 and final.strategy.lora_r == 16
    assert final.training.early_stopping_patience is None and final_config(lora, None) == lora
