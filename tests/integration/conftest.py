"""Integration fixtures: a real Prefect API (test harness) and small task datasets."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "lovely", "brilliant", "charming"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "poor", "clumsy", "tedious", "disappointing"]
THINGS = ["film", "phone", "hotel", "meal", "book", "service", "album", "game", "jacket", "course"]


def served_worker_env(s3_stack, home: Path, prefix: str) -> dict[str, str]:
    """Environment of a stack's process worker in tests: S3 endpoint and keys (only there), its own
    home and registry prefix, and a worker that polls every second (default: every 10 s)."""
    return {**s3_stack.env(), "ADAPTFLOW_S3_PREFIX": prefix, "ADAPTFLOW_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "1"}


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API server for the whole session; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def write_reviews(path: Path, rows: int = 120, seed: int = 0) -> Path:
    """A separable two-class CSV: a tiny model learns it in a few steps."""
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        seen = set()
        while len(seen) < rows:
            label = rng.choice(["positive", "negative"])
            word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
            text = f"the {rng.choice(THINGS)} was {word} {rng.choice(['really', 'truly', 'quite', ''])} {rng.randint(0, 9999)}".replace(
                "  ", " "
            )
            if text not in seen:
                seen.add(text)
                writer.writerow([text, label])
    return path


@pytest.fixture
def reviews_csv(tmp_path) -> Path:
    return write_reviews(tmp_path / "reviews.csv")


def tiny_config(model_dir: Path, data_path: Path, work_dir: Path, strategy: dict | None = None, **sections) -> dict:
    """A config that trains a tiny model for a few steps."""
    cfg = {
        "model": str(model_dir),
        "strategy": strategy or {"name": "full_fine_tuning"},
        "data": {"data": str(data_path), "max_length": 32, **sections.pop("data", {})},
        "training": {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-3, "log_every": 2, **sections.pop("training", {})},
        "work_dir": str(work_dir),
    }
    cfg.update(sections)
    return cfg
