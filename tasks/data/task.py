"""The Prefect task around :func:`~adaptflow.tasks.data.prepare.prepare_data`.

Thin on purpose: the plain function does the work (and is what tests call); this adds
the S3 fetcher when an input is on S3, a log line and the data-quality report artifact.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks.config import DataConfig
from adaptflow.tasks.data.prepare import data_report_markdown, prepare_data
from adaptflow.tasks.data.sources import fetcher_for
from adaptflow.tasks.data.store import PreparedData


@task(name="prepare-data", cache_policy=NO_CACHE, retries=0)
def prepare_data_task(cfg: DataConfig, tokenizer_dir: Path, work_dir: Path) -> PreparedData:
    """Prepare (or reuse) the tokenized dataset; publish its data-quality report."""
    prepared = prepare_data(cfg, tokenizer_dir, work_dir, fetch=fetcher_for(cfg.data, cfg.eval_data))
    logger = get_run_logger()
    m = prepared.manifest
    verb = "reused prepared data" if prepared.reused else "prepared data"
    logger.info(f"{verb} {m['key']}: splits {m['splits']}, labels {m['label_names']} -> {prepared.path}")
    create_markdown_artifact(data_report_markdown(m), key="data-report", description="Data-quality report")
    return prepared
