"""The one configuration model, and the CLI options derived from it."""

from __future__ import annotations

import json

import pytest

from adaptflow.flows.cli.options import config_options, options_to_config
from adaptflow.tasks.config import AdaptConfig, Lora, load_config, load_config_file
from adaptflow.tasks.errors import ConfigError


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
        {
            "data": "train.tsv",
            "batch_size": 8,
            "lora_r": 4,
            "lora_target_modules": "query, value",
            "num_processes": 2,
            "register_model": False,
        },
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


# ---- the strategy union in the Prefect form ------------------------------------------------
# The form keeps the previous tab's values when the strategy tab changes and submits them with
# the new strategy's. The server validates runs against the stored JSON schema, the worker
# against the pydantic model: both must accept every strategy with other strategies' fields.


def _stored_schema(flow) -> dict:
    """The parameter schema exactly as a deployment stores it (infra/deploy.py)."""
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump_for_openapi()


def _carried_over(name: str) -> dict:
    """Strategy ``name`` as the form submits it after every other tab was visited."""
    from adaptflow.tasks.config import STRATEGY_CLASSES

    payload: dict = {}
    for other in STRATEGY_CLASSES.values():
        payload.update(other().model_dump(mode="json"))
    return {**payload, **STRATEGY_CLASSES[name]().model_dump(mode="json")}


def _server_accepts(schema: dict, parameters: dict) -> list[str]:
    """What the Prefect server checks with enforce_parameter_schema (jsonschema, draft 2020-12)."""
    from prefect.utilities.schema_tools.validation import validate

    return [error.message for error in validate(parameters, schema)]


def _union_flows():
    """Every flow parameter holding the strategy union, and how to put one strategy payload into it."""
    from adaptflow.flows.adapt import adapt
    from adaptflow.flows.compare import compare
    from adaptflow.flows.retrain import retrain

    return [
        (adapt, lambda s: {"config": {"strategy": s}}),
        (compare, lambda s: {"config": {"strategies": [s]}}),
        (retrain, lambda s: {"config": {"strategy": s}}),
    ]


@pytest.mark.parametrize("name", ["transfer_learning", "partial_fine_tuning", "full_fine_tuning", "lora"])
def test_every_strategy_tab_submits_with_the_other_tabs_fields(name):
    for flow, parameters in _union_flows():
        schema = _stored_schema(flow)
        payload = parameters(_carried_over(name))
        assert _server_accepts(schema, payload) == [], (flow.name, name)
        validated = flow.validate_parameters(payload)  # what the worker does before the flow starts
        strategies = validated["config"].strategies if flow.name == "compare" else [validated["config"].strategy]
        assert [s.name for s in strategies] == [name]
        assert strategies[0].model_dump() == type(strategies[0])().model_dump(), "other strategies' fields are dropped"


def test_domain_adaptation_tab_submits_too():
    from adaptflow.flows.adapt import adapt

    payload = {"config": {"strategy": _carried_over("domain_adaptation")}}
    assert _server_accepts(_stored_schema(adapt), payload) == []
    assert adapt.validate_parameters(payload)["config"].strategy.name == "domain_adaptation"


def test_a_field_of_no_strategy_is_refused_by_server_and_worker():
    from adaptflow.flows.adapt import adapt

    strategy = {**_carried_over("lora"), "lora_rank": 8}
    payload = {"config": {"strategy": strategy}}
    assert _server_accepts(_stored_schema(adapt), payload)
    with pytest.raises(Exception, match="lora_rank"):
        adapt.validate_parameters(payload)


def test_per_strategy_flows_accept_their_form_and_refuse_unknown_fields():
    from adaptflow.flows import strategies as per_strategy

    for name in ("transfer_learning", "partial_fine_tuning", "full_fine_tuning", "lora", "domain_adaptation"):
        flow = getattr(per_strategy, name)
        schema = _stored_schema(flow)
        assert _server_accepts(schema, {"strategy": _carried_over(name)}) == []
        assert flow.validate_parameters({"strategy": _carried_over(name)})["strategy"].name == name
        assert _server_accepts(schema, {"strategy": {"name": name, "bogus": 1}})


def test_config_files_name_the_strategy_a_stray_field_belongs_to():
    with pytest.raises(ConfigError) as info:
        load_config({"strategy": {"name": "full_fine_tuning", "lora_r": 4, "last_n_layer": 2}})
    text = str(info.value)
    assert "strategy.lora_r: belongs to strategy lora, not full_fine_tuning" in text
    assert "strategy.last_n_layer: Extra inputs are not permitted" in text
    from adaptflow.tasks.evaluation.compare_config import load_compare_config

    with pytest.raises(ConfigError, match="strategies.0.head_epochs: belongs to strategy transfer_learning, not lora"):
        load_compare_config({"strategies": [{"name": "lora", "head_epochs": 3}]})


# ---- the language-model section --------------------------------------------------------------


def test_language_model_fields_have_their_own_section():
    cfg = load_config({"lm": {"packing": True, "generation_samples": 2}})
    assert cfg.lm.packing and cfg.lm.generation_samples == 2
    schema = AdaptConfig.model_json_schema()
    for section in ("data", "training"):
        fields = schema["$defs"][schema["properties"][section]["$ref"].rsplit("/", 1)[-1]]["properties"]
        assert not {"prompt_column", "packing", "generation_samples"} & set(fields)
    assert "causal_lm" in schema["properties"]["lm"]["title"]
    assert {o.param: o.panel for o in config_options()}["packing"].startswith("Language model")
    from adaptflow.flows.strategies import domain_adaptation

    assert domain_adaptation.validate_parameters({"lm": {"packing": True}})["lm"].packing  # the per-strategy flows take it too


def test_configs_recorded_before_the_lm_section_still_load():
    old = {"data": {"data": "x.csv", "packing": True, "prompt_column": "q"}, "training": {"generation_samples": 3, "epochs": 2}}
    cfg = load_config(old)
    assert (cfg.lm.packing, cfg.lm.prompt_column, cfg.lm.generation_samples) == (True, "q", 3)
    assert cfg.data.data == "x.csv" and cfg.training.epochs == 2
