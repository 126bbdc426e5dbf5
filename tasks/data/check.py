"""The check of a run's local data before any work: what :func:`prepare_data` would refuse, found without a tokenizer.

A missing input is found first, without reading anything (and without pandas: the
CLI refuses ``--data missing.csv`` in about a second); then every input is read,
validated and split exactly as :func:`adaptflow.tasks.data.prepare.prepare_data` does.
"""

from __future__ import annotations

from pathlib import Path

from adaptflow.tasks.config import DataConfig
from adaptflow.tasks.data.sources import is_local, resolve_source
from adaptflow.tasks.errors import DataError, run_all


def check_data(cfg: DataConfig, work_dir: Path) -> None:
    """Raise one :class:`DataError` naming every missing or bad file, column, row or label of local inputs.

    Inputs on S3 or the hub are left to :func:`prepare_data`, which fetches them.
    """
    if any(ref and not is_local(ref) for ref in (cfg.data, cfg.eval_data)):
        return
    data, eval_data = run_all(
        lambda: resolve_source("data", cfg.data, work_dir, None),
        lambda: resolve_source("eval_data", cfg.eval_data, work_dir, None) if cfg.eval_data else None,
        catch=DataError,
    )
    from adaptflow.tasks.data.prepare import validated  # reads the tables (pandas): only once every input exists

    validated(cfg, data, eval_data)
