"""Compare report logic: budget, grid, Pareto front, recommendation, config checks."""

from __future__ import annotations

import math

import pytest

from adaptflow.flows.cli.compare import fit_columns
from adaptflow.tasks.errors import ConfigError
from adaptflow.tasks.evaluation.compare import (
    PROBE_STEPS,
    bootstrap_intervals,
    budget_sentence,
    curve_findings,
    final_config,
    grid,
    learning_curve,
    mcnemar_midp,
    paired_tests,
    pareto_front,
    pick_best,
    probe_config,
    projected_seconds,
    recommend,
    trial_config,
    with_budget,
)
from adaptflow.tasks.evaluation.compare_config import load_compare_config
from adaptflow.tasks.evaluation.compare_report import mean_sd
from adaptflow.tasks.evaluation.cost import gpu_seconds, training_flops


def _row(name, acc, time_s, mem, f1=None, p=None):
    paired = None if p is None else {"against": "?", "a_only": 0, "b_only": 0, "p_value": p}
    f1 = acc if f1 is None else f1
    return {"strategy": name, "accuracy": acc, "macro_f1": f1, "train_runtime_s": time_s, "peak_memory_mb": mem, "paired": paired}


ROWS = [
    _row("transfer_learning", 0.78, 10, 700, p=0.001),
    _row("partial_fine_tuning", 0.77, 17, 990, p=0.0004),
    _row("full_fine_tuning", 0.82, 33, 1500),
    _row("lora", 0.80, 31, 1900, p=0.02),
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


def test_recommendation_calls_a_tie_by_the_paired_test_and_names_the_cheapest():
    # lora leads by 0.2 points but the paired test cannot tell it from full fine-tuning; transfer learning is 10 points
    # behind yet also not significantly different (a tiny evaluation set): both tie, and the cheapest is named
    rows = [
        _row("lora", 0.801, 31, 1900),
        _row("full_fine_tuning", 0.799, 33, 1500, p=0.9),
        _row("transfer_learning", 0.70, 10, 700, p=0.06),
    ]
    rec = recommend(rows, max_train_seconds=1)
    assert rec["best_quality"] == "lora" and rec["tied_with"] == ["full_fine_tuning", "transfer_learning"]
    assert rec["cheapest_of_tie"] == "transfer_learning" and rec["within_budget"] is None
    text = " ".join(rec["text"])
    assert "Tie" in text and "not significant" in text and "Nothing fits" in text and "transfer_learning (10.0 s)" in text
    # a significant difference is no tie, however small
    rows[1]["paired"]["p_value"] = 0.01
    rows[2]["paired"]["p_value"] = 0.001
    rec = recommend(rows)
    assert rec["tied_with"] == [] and rec["cheapest_of_tie"] == "lora" and "Significantly behind" in " ".join(rec["text"])


def test_mcnemar_mid_p_matches_the_binomial_by_hand():
    # 10 rows only A got right, 5 only B, 85 both or neither: k=5, n=15
    a = [True] * 10 + [False] * 5 + [True] * 40 + [False] * 45
    b = [False] * 10 + [True] * 5 + [True] * 40 + [False] * 45
    result = mcnemar_midp(a, b)
    below = sum(math.comb(15, i) for i in range(5)) / 2**15
    assert result["a_only"] == 10 and result["b_only"] == 5
    assert result["p_value"] == pytest.approx(2 * (below + math.comb(15, 5) / 2**16))
    assert mcnemar_midp(a, a)["p_value"] == 1.0  # identical predictions: no evidence of a difference
    strong = mcnemar_midp([True] * 30, [False] * 30)
    assert strong["p_value"] < 1e-8
    with pytest.raises(ValueError, match="same rows"):
        mcnemar_midp([True], [True, False])


def test_paired_tests_compare_every_strategy_with_the_most_accurate():
    rows = [_row("a", 0.9, 1, 1), _row("b", 0.5, 1, 1)]
    tests = paired_tests(rows, {"a": [True] * 9 + [False], "b": [True] * 5 + [False] * 5})
    assert list(tests) == ["b"] and tests["b"]["against"] == "a" and tests["b"]["a_only"] == 4 and tests["b"]["b_only"] == 0


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_more_rows():
    names = ["neg", "pos"]
    small = bootstrap_intervals([0, 1] * 25, [0, 1] * 20 + [1, 0] * 5, names)
    large = bootstrap_intervals([0, 1] * 500, [0, 1] * 400 + [1, 0] * 100, names)
    for ci in (small, large):
        assert ci["accuracy"][0] < 0.8 < ci["accuracy"][1] and ci["macro_f1"][0] < 0.8 < ci["macro_f1"][1]
    width = {k: v["accuracy"][1] - v["accuracy"][0] for k, v in (("small", small), ("large", large))}
    assert width["large"] < width["small"] / 3  # about sqrt(20) narrower
    assert bootstrap_intervals([0, 1] * 25, [0, 1] * 20 + [1, 0] * 5, names) == small  # seeded: reproducible
    assert mean_sd([0.8, 0.82, 0.84]) == pytest.approx((0.82, 0.02)) and mean_sd([0.5]) == (0.5, 0.0)


def test_learning_curves_in_words():
    evals = [
        {"step": s, "eval_loss": 1 / s, "accuracy": acc, "split": "validation", "train_s": 2.0 * s}
        for s, acc in ((1, 0.5), (2, 0.6), (3, 0.7))
    ]
    curve = learning_curve([*evals, {"step": 3, "eval_loss": 0.1, "accuracy": 0.9, "split": "eval"}], examples_per_step=16, start_s=5.0)
    assert [p["examples"] for p in curve] == [16, 32, 48] and [p["seconds"] for p in curve] == [7.0, 9.0, 11.0]  # never the eval split
    flat = [dict(p, accuracy=a) for p, a in zip(curve, (0.8, 0.8, 0.65))]
    lines = curve_findings({"lora": curve, "transfer_learning": flat})
    text = " ".join(lines)
    assert "changed along the way: transfer_learning from 33% of the budget, then lora from 100% of the budget" in text
    assert "more budget would likely help lora" in text and "help transfer_learning" not in text
    assert "No curve was still rising" in " ".join(curve_findings({"transfer_learning": flat}))
    assert "no validation split" in curve_findings({"lora": []})[0]


def test_examples_budget_counts_backbone_examples_and_keeps_natural_schedules():
    cc = load_compare_config({"training": {"batch_size": 8}, "budget_examples": 100})
    plans = {cfg.strategy.name: with_budget(cfg, cc, train_rows=1000) for cfg in cc.adapt_configs()}
    # fine-tuning: the budget's examples through the backbone, the same steps for each
    assert {n: p.training.max_steps for n, p in plans.items() if n != "transfer_learning"} == dict.fromkeys(
        ["partial_fine_tuning", "full_fine_tuning", "lora"], 13
    )
    # transfer learning: its natural schedule (head_epochs passes over cached features), not cut to the budget
    tl = plans["transfer_learning"]
    assert tl.training.max_steps is None and tl.strategy.head_epochs == 20
    assert tl.training.eval_every == 20 * 125 // 5 and plans["lora"].training.eval_every == 13 // 5  # about 5 curve points
    sentence = budget_sentence(cc, 1000, list(plans.values()))
    assert sentence.startswith("100 training examples through the backbone's forward pass per strategy")
    assert "900 more than the budget" in sentence and "20 head passes" in sentence
    default = load_compare_config({"training": {"batch_size": 32, "epochs": 2}})
    assert default.data.validation_fraction == 0.1  # compare holds out a validation split for the curves by default
    assert {with_budget(c, default, train_rows=320).training.max_steps for c in default.adapt_configs()} == {None, 20}
    passes = load_compare_config({"training": {"batch_size": 32}, "budget_passes": 3})
    assert with_budget(passes.adapt_configs()[3], passes, 320).training.max_steps == 30
    timed = load_compare_config({"budget_seconds": 30})
    assert all(with_budget(c, timed, 320).training.time_limit_s == 30 for c in timed.adapt_configs())
    assert "at most 30 s of training" in budget_sentence(timed, 320, timed.adapt_configs())
    no_validation = load_compare_config({"data": {"validation_fraction": 0}, "budget_examples": 100})
    assert with_budget(no_validation.adapt_configs()[3], no_validation, 1000).training.eval_every is None


def _report_row(name, acc, seeds=None):
    row = {
        "strategy": name,
        "accuracy": acc,
        "macro_f1": acc - 0.001,
        "accuracy_ci": [acc - 0.027, acc + 0.026],
        "macro_f1_ci": [acc - 0.028, acc + 0.025],
        "train_runtime_s": 1234.5,
        "peak_memory_mb": 1850.0,
        "pareto_train_runtime_s": True,
        "pareto_peak_memory_mb": False,
        "paired": None if name == "full_fine_tuning" else {"against": "full_fine_tuning", "a_only": 30, "b_only": 12, "p_value": 0.008},
        "trainable_params": 22_713_986,
        "trainable_pct": 100.0,
        "samples_per_s": 12.3,
        "artifact_mb": 86.7,
        "forgetting": 0.1234,
        "hyperparameters": "lr 2e-05, r 8",
        "seeds": seeds or {},
    }
    return row


@pytest.mark.parametrize("seeds", [None, {"accuracy": [0.81, 0.82, 0.83], "macro_f1": [0.8, 0.81, 0.82]}])
@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_table_keeps_its_key_columns_whole_at_any_width(width, seeds):
    rows = [
        _report_row(n, 0.8 + i / 100, seeds) for i, n in enumerate(["transfer_learning", "partial_fine_tuning", "full_fine_tuning", "lora"])
    ]
    columns, style = fit_columns(rows, width)
    headers = [h for h, _ in columns]
    assert headers[:6] == ["strategy", "accuracy", "95% CI", "macro-F1", "time", "memory"]
    per_column = 3 if style.head_vertical.strip() else 2
    assert sum(max(len(h), *map(len, cells)) + per_column for h, cells in columns) <= width
    if width == 200:
        assert headers[-1] == "hyper-parameters"  # a wide terminal shows everything
    shown = dict(columns)
    assert "partial_fine_tuning*" in shown["strategy"]
    assert ("0.820±0.010" if seeds else "0.8200") in shown["accuracy"]


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
            {
                "strategies": [{"name": "lora"}, {"name": "lora"}],
                "data": {"validation_fraction": 0},
                "budget_examples": 10,
                "budget_seconds": 5,
                "search_lr_factors": [1, 2],
            }
        )
    text = str(err.value)
    assert "each strategy once" in text and "one budget" in text and "validation_fraction" in text


def test_final_run_uses_the_winning_point_without_the_trial_settings():
    cc = load_compare_config({"strategies": [{"name": "lora"}]})
    (lora,) = cc.adapt_configs()
    final = final_config(lora, {"learning_rate": 5e-4, "lora_r": 16})
    assert final.learning_rate() == 5e-4 and final.strategy.lora_r == 16
    assert final.training.early_stopping_patience is None and final_config(lora, None) == lora


def test_estimate_projects_the_budget_from_the_probe_and_flops_for_a_gpu():
    cc = load_compare_config({"training": {"batch_size": 32}, "budget_examples": 3200})
    plans = {c.strategy.name: with_budget(c, cc, train_rows=2000) for c in cc.adapt_configs()}
    splits = {"train": 2000, "validation": 1000, "eval": 872}
    probe = {"loop_time_s": 9.0, "eval_time_s": 1.0, "steps": 8, "feature_time_s": 0.0}
    assert projected_seconds(plans["lora"], probe, {}, splits) == pytest.approx(100 * 1.0)  # 100 budget steps at 1 s
    # with the warm-up measured: the first step once (1.7 s), the other 7 probe steps give 0.9 s per step
    warm = {**probe, "first_step_s": 1.7}
    assert projected_seconds(plans["lora"], warm, {}, splits) == pytest.approx(1.7 + 99 * 0.9)
    assert probe_config(plans["lora"]).training.max_steps == PROBE_STEPS and not probe_config(plans["lora"]).registry.register_model
    tl_probe = {"loop_time_s": 1.6, "eval_time_s": 0.0, "steps": 160, "feature_time_s": 3.2}
    probe_rows = {"train": 256, "validation": 32, "eval": 32}  # 320 rows in 3.2 s: 0.01 s per row
    # features for 3,872 rows, then 20 head passes of 63 steps at 0.01 s
    assert projected_seconds(plans["transfer_learning"], tl_probe, probe_rows, splits) == pytest.approx(38.72 + 12.6)
    # the backbone's warm-up in the first feature batch (64 rows, 1.28 s) once; 1.92 s for the other 256 rows
    tl_warm = {**tl_probe, "feature_first_batch_s": 1.28, "feature_first_batch_rows": 64}
    assert projected_seconds(plans["transfer_learning"], tl_warm, probe_rows, splits) == pytest.approx(1.28 + 0.0075 * 3808 + 12.6)
    timed = load_compare_config({"training": {"batch_size": 32}, "budget_seconds": 30})
    assert projected_seconds(with_budget(timed.adapt_configs()[3], timed, 2000), probe, {}, splits) == pytest.approx(31.0)

    tokens = {"train": 10.0, "validation": 10.0, "eval": 20.0}
    full = training_flops(plans["full_fine_tuning"], 1000, 1000, tokens, splits)
    lora = training_flops(plans["lora"], 10, 1000, tokens, splits)
    assert full == pytest.approx(6 * 1000 * 3200 * 10) and lora == pytest.approx((4 * 1000 + 20) * 3200 * 10)
    assert training_flops(plans["transfer_learning"], 1, 1000, tokens, splits) == pytest.approx(2 * 1000 * (20000 + 10000 + 17440))
    assert gpu_seconds(312e12 * 0.3, "a100") == pytest.approx(1.0) and gpu_seconds(1e12, "t4", utilisation=1.0) == pytest.approx(1 / 65)
