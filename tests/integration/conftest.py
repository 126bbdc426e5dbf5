"""Integration fixtures: a real Prefect API (test harness) and small task datasets."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
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


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """``predicate()``'s first truthy value, polled every ``interval`` seconds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def network_namespace():
    """A network namespace joined to this one by a veth pair: a second 'host' on private addresses."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"afnode-{tag}", f"afh{tag}", f"afp{tag}"
    subnet = 10 + int(tag[:2], 16) % 200  # 10.123.<subnet>.0/30, addresses of our own test hosts only
    host_addr, peer_addr = f"10.123.{subnet}.1", f"10.123.{subnet}.2"
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", here)
        _ip("link", "set", here, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{peer_addr}/30", "dev", there)
        _ip("netns", "exec", ns, "ip", "link", "set", there, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        yield {"ns": ns, "host_if": here, "peer_if": there, "host_addr": host_addr, "peer_addr": peer_addr}
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def second_host():
    """A second 'host' (:func:`network_namespace`) for one test."""
    with network_namespace() as host:
        yield host
