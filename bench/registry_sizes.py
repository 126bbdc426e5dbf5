"""Bytes uploaded to register a LoRA version versus a full fine-tuning version of the same base.

Builds both version folders from one base model exactly as a run saves and registers them
(``build_classifier`` -> the strategy -> ``save_classifier`` -> ``write_classifier_folder``), without training: sizes do
not depend on the weights' values. Registers each under a model name of its own (nothing
to share: the LoRA version pays for its tokenizer too), then the LoRA folder again under
the full model's name (the tokenizer is then already stored), on a local S3 server
started in a temporary ADAPTFLOW_HOME and stopped at the end. Prints a table.

    python bench/registry_sizes.py                 # the bundled MiniLM (22.7M parameters)
    python bench/registry_sizes.py --base DIR      # any local Hugging Face model folder
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptflow.tasks.registry.store import RegisteredVersion, register_version  # noqa: E402
from adaptflow.tasks.storage.s3 import S3Settings  # noqa: E402

LABELS = ["negative", "positive"]


@dataclass(frozen=True)
class Row:
    label: str
    version: RegisteredVersion

    @property
    def files(self) -> int:
        return len(self.version.files)


def build_version_folder(base: Path, strategy: str, out_dir: Path, base_ref: str | None = None) -> Path:
    """The registered model folder (folder layout 2) a run of ``strategy`` on ``base`` gives (untrained weights)."""
    from transformers import AutoTokenizer

    from adaptflow.tasks.base_model import inspect_model
    from adaptflow.tasks.config import load_config
    from adaptflow.tasks.modeling import build_classifier, save_classifier
    from adaptflow.tasks.registry.hf_folder import write_classifier_folder
    from adaptflow.tasks.strategies import get_strategy

    cfg = load_config({"model": str(base), "strategy": {"name": strategy}})
    info = inspect_model(base)
    model = get_strategy(strategy).configure_classifier(build_classifier(info, cfg.strategy.pooling, len(LABELS)), cfg)
    meta = {"strategy": strategy, "label_names": LABELS, "base_model": str(base)}
    saved = save_classifier(model, out_dir / "saved", AutoTokenizer.from_pretrained(base), meta)
    write_classifier_folder(saved, out_dir / "version", base_ref or str(base))
    return out_dir / "version"


def measure(settings: S3Settings, base: Path, work_dir: Path) -> list[Row]:
    """Register full and LoRA folders of ``base``; the LoRA one twice (alone, then beside the full one)."""
    full = build_version_folder(base, "full_fine_tuning", work_dir / "full")
    lora = build_version_folder(base, "lora", work_dir / "lora")
    return [
        Row("full_fine_tuning", register_version(settings, "bench-full", full, {"strategy": "full_fine_tuning"})),
        Row("lora", register_version(settings, "bench-lora", lora, {"strategy": "lora"})),
        Row("lora, same name as full", register_version(settings, "bench-full", lora, {"strategy": "lora"})),
    ]


def lora_ratio(rows: list[Row]) -> float:
    """Bytes uploaded by the stand-alone LoRA registration over those of the full one."""
    uploaded = {row.label: row.version.uploaded_bytes for row in rows}
    return uploaded["lora"] / uploaded["full_fine_tuning"]


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    full = next(row for row in rows if row.label == "full_fine_tuning").version.uploaded_bytes
    table = Table(title="Registry: bytes uploaded per version", title_style="bold")
    for column in ("strategy", "files", "version size", "uploaded", "uploaded / full"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in rows:
        version = row.version
        table.add_row(
            row.label,
            str(row.files),
            f"{version.total_bytes / 2**20:.2f} MiB",
            f"{version.uploaded_bytes / 2**20:.3f} MiB",
            f"{version.uploaded_bytes / full:.2%}",
        )
    Console(width=120).print(table)


def main() -> int:
    from transformers.utils import logging as hf_logging

    from adaptflow.infra.stack import LocalS3Stack
    from tests.model_fixtures import minilm_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=None, help="base model folder (default: the bundled MiniLM)")
    args = parser.parse_args()
    base = args.base or minilm_path()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="adaptflow-bench-") as tmp:
        stack = LocalS3Stack(Path(tmp) / "home")
        stack.up(timeout=90)
        try:
            rows = measure(stack.settings(), base, Path(tmp) / "folders")
        finally:
            stack.down()
    print(f"base model: {base}")
    print_table(rows)
    print(f"LoRA / full fine-tuning, bytes uploaded: {lora_ratio(rows):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
