"""What every benchmark shares: where SST-2 lives, preparing it once, printing and saving results."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from adaptflow.flows.cli.common import BAR_REFRESH_PER_S
from adaptflow.tasks.base_model import resolve_model
from adaptflow.tasks.config import DEFAULT_MODEL, AdaptConfig, DataConfig, load_config
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.data.store import PreparedData

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "bench-results"
console = Console(width=160)


def require_sst2(folder: Path = SST2) -> Path:
    """The SST-2 folder, or a one-line explanation and exit code 2 when it is missing."""
    if not (folder / "train.tsv").is_file() or not (folder / "dev.tsv").is_file():
        console.print(f"[red]SST-2 not found at {folder} (train.tsv, dev.tsv). Pass --sst2 FOLDER.[/red]")
        sys.exit(2)
    return folder


def work_dir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"adaptflow-{name}-"))


def prepare_sst2(
    folder: Path, work: Path, train_samples: int | None, max_length: int = 128, eval_samples: int | None = None
) -> tuple[Path, DataConfig, PreparedData]:
    """The offline MiniLM and SST-2 (train -> train, dev -> eval) prepared once for every configuration."""
    model = resolve_model(DEFAULT_MODEL, work)
    data = {
        "data": str(folder / "train.tsv"),
        "eval_data": str(folder / "dev.tsv"),
        "text_column": "sentence",
        "eval_text_column": "content",
        "max_train_samples": train_samples,
        "max_eval_samples": eval_samples,
        "max_length": max_length,
    }
    data_cfg = load_config({"data": data}).data
    return model, data_cfg, prepare_data(data_cfg, model, work)


def strategy_config(model: Path, data_cfg: DataConfig, strategy: str, work: Path, params: dict | None = None, **training) -> AdaptConfig:
    return load_config(
        {
            "model": str(model),
            "strategy": {"name": strategy, **(params or {})},
            "data": data_cfg.model_dump(),
            "training": {"log_every": 25, **training},
            "registry": {"register_model": False},
            "work_dir": str(work),
        }
    )


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def write_json(name: str, payload: dict, output: str | None = None) -> Path:
    path = Path(output) if output else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cpu_count": os.cpu_count(), **payload}, indent=2))
    console.print(f"wrote {path}")
    return path


def train_with_progress(cfg: AdaptConfig, prepared: PreparedData, model: Path, run_dir: Path, label: str) -> dict:
    """run_training with a progress bar per run (steps, loss); returns the worker's metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from adaptflow.tasks.training.launch import run_training

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        refresh_per_second=BAR_REFRESH_PER_S,
    ) as bar:
        task = bar.add_task(label, total=None, status="loading")

        def on_event(event: dict) -> None:
            if event["type"] == "start":
                bar.update(task, total=event["total_steps"], status="training")
            elif event["type"] == "progress":
                bar.update(task, completed=event["step"], status=f"loss {event['train_loss']:.3f}")
            elif event["type"] == "done":
                bar.update(task, status=f"done, accuracy {event['eval_accuracy']:.4f}")

        return run_training(cfg, prepared.path, model, run_dir, on_event=on_event)
