"""The one configuration model, and the CLI options derived from it."""

from __future__ import annotations

import json

import pytest

from flows.cli import config_options, options_to_config
from tasks.config import AdaptConfig, Lora, load_config, load_config_file
from tasks.errors import ConfigError


def test_defaults_run_the_bundled_example():
    cfg = load_config({})
    assert cfg.data.data == "sample://reviews"
    assert cfg.strategy.name == "transfer_learning"
    assert cfg.learning_rate() == 2e-3  # the strategy's default
    assert cfg.model_name() == "sample-reviews-transfer-learning"


def test_every_problem_is_reported_at_once_with_its_field():
    with pytest.raises(ConfigError) as info:
        load_config(
            {
                "training": {"learning_rate": -1, "batch_size": 0},
                "strategy": {"name": "lora", "lora_r": 0},
                "registry": {"model_name": "../escape"},
            }
        )
    text = str(info.value)
    assert len(info.value.problems) == 4
    for field in ("training.learning_rate", "training.batch_size", "strategy.lora_r", "registry.model_name"):
        assert field in text
    assert "got -1" in text


def test_unknown_strategy_and_unknown_field_are_named():
    with pytest.raises(ConfigError, match="transfer_learning"):
        load_config({"strategy": {"name": "magic"}})
    with pytest.raises(ConfigError, match="training.learnin_rate"):
        load_config({"training": {"learnin_rate": 1e-3}})


def test_config_is_frozen_and_round_trips_through_json():
    cfg = load_config({"strategy": {"name": "lora", "lora_r": 4, "lora_target_modules": ["query", "value"]}})
    with pytest.raises(Exception):
        cfg.model = "other"  # type: ignore[misc]
    again = AdaptConfig.model_validate_json(cfg.to_json())
    assert again == cfg and isinstance(again.strategy, Lora)


def test_every_field_has_a_description_and_a_unique_flag():
    options = config_options()
    flags = [o.flag for o in options]
    assert len(flags) == len(set(flags)), "field names must be unique across sections"
    assert all(o.help.strip() for o in options)


def test_cli_values_map_to_nested_fields():
    cfg = options_to_config(
        {"data": "train.tsv", "batch_size": 8, "lora_r": 4, "lora_target_modules": "query, value", "num_processes": 2, "register_model": False},
        "lora",
    )
    assert cfg.data.data == "train.tsv"
    assert cfg.training.batch_size == 8
    assert cfg.strategy.lora_r == 4 and cfg.strategy.lora_target_modules == ["query", "value"]
    assert cfg.launch.num_processes == 2
    assert cfg.registry.register_model is False


def test_strategy_option_for_another_strategy_is_refused():
    with pytest.raises(ConfigError, match="--lora-r.*does not apply to strategy 'full_fine_tuning'"):
        options_to_config({"lora_r": 4}, "full_fine_tuning")


def test_config_file_is_merged_with_cli_options(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("strategy:\n  name: partial_fine_tuning\n  last_n_layers: 3\ntraining:\n  epochs: 2\n  batch_size: 16\n")
    cfg = options_to_config({"batch_size": 4}, None, load_config_file(path))
    assert cfg.strategy.name == "partial_fine_tuning" and cfg.strategy.last_n_layers == 3
    assert cfg.training.epochs == 2 and cfg.training.batch_size == 4


def test_bad_config_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")


def test_schema_renders_strategies_as_a_choice():
    schema = AdaptConfig.model_json_schema()
    strategy = schema["properties"]["strategy"]
    assert "discriminator" in strategy or "oneOf" in strategy
    assert json.dumps(schema)  # serialisable for the Prefect UI
