"""A quality check on real data: SST-2 from ../shared (skipped where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptflow.flows.adapt import adapt
from adaptflow.tasks.config import load_config

SST2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst2"
pytestmark = [pytest.mark.sst2, pytest.mark.usefixtures("prefect_api")]


@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason="../shared/data/sst2 is not available")
def test_transfer_learning_on_sst2_beats_70_percent(minilm_dir, tmp_path):
    cfg = load_config(
        {
            "model": str(minilm_dir),
            "strategy": {"name": "transfer_learning"},
            "data": {"data": str(SST2 / "train.tsv"), "eval_data": str(SST2 / "dev.tsv"), "max_train_samples": 2000},
            "registry": {"register_model": False},
            "work_dir": str(tmp_path / "work"),
        }
    )
    summary = adapt(config=cfg)
    assert summary["accuracy"] >= 0.70, summary
    assert summary["macro_f1"] >= 0.70, summary
