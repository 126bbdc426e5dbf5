"""The retrain key and the configuration a retrain uses (tasks/retrain.py), without S3 or Prefect."""

from __future__ import annotations

import pytest

from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.registry.retrain_key import manifest_key, retrain_config, retrain_key, trained_on

DATA = {"uri": "data/reviews.csv", "kind": "file", "sha256": "a" * 64, "size": 100}


def _config(**changes) -> dict:
    raw = AdaptConfig().model_dump(mode="json")
    for path, value in changes.items():
        section, _, field = path.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    return raw


def test_key_ignores_where_things_are_and_follows_what_is_trained() -> None:
    key = retrain_key(DATA, None, _config(), "abc123")
    assert (
        retrain_key(
            {**DATA, "uri": "s3://bucket/elsewhere.csv"}, None, _config(data__data="s3://bucket/elsewhere.csv", work_dir="/tmp/w"), "abc123"
        )
        == key
    )
    assert retrain_key({**DATA, "sha256": "b" * 64}, None, _config(), "abc123") != key
    assert retrain_key(DATA, {**DATA, "uri": "dev.csv"}, _config(), "abc123") != key
    assert retrain_key(DATA, None, _config(training__epochs=2), "abc123") != key
    assert retrain_key(DATA, None, _config(), "def456") != key


def test_a_manifest_yields_the_key_of_the_retrain_that_made_it() -> None:
    manifest = {"config": _config(), "code_version": "abc123", "data": {"source": {"data": DATA, "eval_data": None}}}
    assert manifest_key(manifest) == retrain_key(DATA, None, _config(), "abc123")
    assert trained_on(manifest) == DATA
    assert manifest_key({"config": _config()}) is None and trained_on({}) is None


def test_retrain_config_takes_given_then_champion_then_defaults() -> None:
    champion = {"config": _config(strategy={"name": "lora", "lora_r": 4}, work_dir="/other/machine")}
    from_champion = retrain_config("reviews", "new.csv", None, champion)
    assert (from_champion.strategy.name, from_champion.strategy.lora_r, from_champion.work_dir) == ("lora", 4, None)
    assert (from_champion.data.data, from_champion.registry.model_name, from_champion.registry.register_model) == (
        "new.csv",
        "reviews",
        True,
    )
    given = retrain_config(
        "reviews", "new.csv", {"strategy": {"name": "full_fine_tuning"}, "registry": {"register_model": False}}, champion
    )
    assert given.strategy.name == "full_fine_tuning" and given.registry.register_model is True
    assert retrain_config("reviews", "new.csv", None, None).strategy.name == AdaptConfig().strategy.name


@pytest.mark.parametrize("name", ["Bad/Name", "../up"])
def test_retrain_config_rejects_bad_model_names(name: str) -> None:
    from adaptflow.tasks.errors import ConfigError

    with pytest.raises(ConfigError, match="registry.model_name"):
        retrain_config(name, "new.csv", None, None)
