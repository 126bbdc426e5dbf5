"""The benchmark scripts import: they are not run by the suite (they need SST-2 and minutes),
so a renamed or moved module they use would otherwise only show when someone benchmarks."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "name", ["overhead", "speed", "quality", "scaling", "registry_sizes", "hf_loading", "predict_memory", "lora_cost"]
)  # each imports bench.common
def test_benchmark_script_imports(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)
