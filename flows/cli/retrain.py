"""``adaptflow retrain`` (the retrain flow for CI systems without a Prefect server) and ``adaptflow deploy``.

Registered on the app in ``flows/cli/app.py``.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from adaptflow.flows.cli.common import WIDE, out, prefect_session, reported
from adaptflow.infra.prefect_stack import SERVER_VAR, PrefectStack, server_mode
from adaptflow.tasks.config import DEFAULT_APPROVAL_TIMEOUT_S, MAX_APPROVAL_TIMEOUT_S, load_config, load_config_file
from adaptflow.tasks.errors import ConfigError, Problem, run_all

NOT_BETTER_EXIT = 10
"""Exit code of ``adaptflow retrain --fail-if-not-better`` when the candidate did not beat the champion."""

MetricChoice = Enum("MetricChoice", {m: m for m in ("macro_f1", "accuracy", "macro_precision", "macro_recall")})


def retrain_command(
    data: str = typer.Option(
        ..., "--data", "-d", help="The current training data: CSV, TSV, JSONL or Parquet file, or an s3:// URI of one."
    ),
    model_name: str = typer.Option(
        ..., "--model-name", "-m", help="Registry name of the model to retrain; its champion's recorded configuration is reused."
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        "-c",
        help="Train with this YAML/JSON config (as `adaptflow run --print-config` writes) instead of the champion's.",
    ),
    metric: MetricChoice = typer.Option("macro_f1", "--metric", help="Metric on which the candidate must beat the champion."),
    min_delta: float = typer.Option(0.0, "--min-delta", min=0, help="Promote only if the candidate's metric >= champion's + this."),
    alias: str = typer.Option("champion", "--alias", help="The alias marking the version in production."),
    fail_if_not_better: bool = typer.Option(
        False, "--fail-if-not-better", help=f"Exit with {NOT_BETTER_EXIT} when a candidate was trained but not promoted (default: exit 0)."
    ),
    require_approval: bool = typer.Option(
        False,
        "--require-approval",
        help="Before moving the alias, pause the run until a person approves it in the Prefect UI (Resume on the run). Needs a Prefect server.",
    ),
    approval_timeout: Optional[int] = typer.Option(
        None,
        "--approval-timeout",
        metavar="SECONDS",
        help="With --require-approval: how long to wait for the answer (default 12 h, at most 7 days).",
    ),
) -> None:
    """Retrain a model if its data changed, and promote the result only if it is better.

    Unchanged data (same contents as the champion's training data) finishes in seconds as "up to date" and trains nothing; the same data, config and code never train twice. Otherwise: train with the champion's configuration, score candidate and champion on the same evaluation rows, move the alias only if the candidate is better.

    With --require-approval (needs a Prefect server: PREFECT_API_URL or `adaptflow stack up`) a promotion waits for a person: the run pauses, showing both versions' metrics, until someone resumes it in the Prefect UI.

    "approve" ticked: promoted. Unticked: rejected, not promoted (exit 10 with --fail-if-not-better). No answer within --approval-timeout: not promoted, exit 11.

    Exit codes: 0 promoted or up to date (or not better, without --fail-if-not-better); 10 not better or rejected, with --fail-if-not-better; 11 approval timed out; 2 invalid configuration, data or base model; 3 S3 storage problem; 4 training failed.

    Example (CI):  adaptflow retrain --data data/reviews.csv --model-name reviews --fail-if-not-better
    """
    with reported():
        given, _, _ = run_all(
            lambda: load_config(load_config_file(config)) if config else None,
            lambda: check_approval_timeout(approval_timeout, require_approval),
            lambda: check_approval_server(require_approval),
        )
    from adaptflow.flows.retrain import check_approval, retrain  # the flow: torch and Prefect, once the input passed

    with prefect_session():
        check_approval(require_approval)  # needs to know the server chosen
        result = retrain(
            model_name=model_name,
            data=data,
            config=given,
            metric=metric.value,
            min_delta=min_delta,
            alias=alias,
            require_approval=require_approval,
            approval_timeout_s=approval_timeout or DEFAULT_APPROVAL_TIMEOUT_S,
        )
    out.print(result_table(result))
    trained = "trained a candidate" if result["trained"] else "trained nothing"
    out.print(f"[bold]{result['status'].replace('_', ' ')}[/]: {result['explanation']}", highlight=False)
    out.print(f"{trained}; {result['alias']} -> version {_text(result['champion_after'])}; {result['wall_s']:.1f} s", highlight=False)
    if fail_if_not_better and result["status"] == "not_promoted":
        raise typer.Exit(NOT_BETTER_EXIT)


retrain_app = typer.Typer()
retrain_app.command("retrain", context_settings=WIDE)(retrain_command)


def check_approval_timeout(seconds: int | None, require_approval: bool) -> None:
    """--approval-timeout within the flow's bounds, and only with --require-approval (alone it would approve nothing)."""
    if seconds is None:
        return
    problems = []
    if not 0 < seconds <= MAX_APPROVAL_TIMEOUT_S:
        problems.append(Problem("--approval-timeout", f"must be 1 to {MAX_APPROVAL_TIMEOUT_S} seconds (7 days), got {seconds}"))
    if not require_approval:
        problems.append(
            Problem("--approval-timeout", "only applies with --require-approval", "add --require-approval, or drop --approval-timeout")
        )
    if problems:
        raise ConfigError(problems)


def check_approval_server(require_approval: bool) -> None:
    """A paused run needs a server that outlives the wait: not the temporary one ADAPTFLOW_PREFECT_SERVER=temporary asks for."""
    if require_approval and server_mode() == "temporary" and not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            Problem(
                "--require-approval",
                f"needs a Prefect server to pause on, and {SERVER_VAR}=temporary gives this run a temporary in-process one",
                f"unset {SERVER_VAR} (a background server is then started), set PREFECT_API_URL, or run `adaptflow stack up`",
            )
        )


def result_table(result: dict) -> Table:
    """Candidate and champion side by side: versions and the metrics both were scored with."""
    table = Table(title=f"Retrain of {result['model_name']}", title_style="bold")
    table.add_column("")
    table.add_column("candidate", justify="right")
    table.add_column(f"{result['alias']} before", justify="right")
    table.add_row("version", _text(result["candidate_version"]), _text(result["champion_before"]))
    candidate, champion = result.get("candidate_metrics") or {}, result.get("champion_metrics") or {}
    for key in ("n", "accuracy", "macro_f1", "macro_precision", "macro_recall"):
        if key in candidate or key in champion:
            table.add_row(key, _text(candidate.get(key)), _text(champion.get(key)))
    return table


def _text(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# ---- adaptflow deploy ------------------------------------------------------------------


def deploy_command(
    name: Optional[list[str]] = typer.Option(
        None, "--name", "-n", help="Deploy only this deployment (repeatable), e.g. -n retrain. Default: all of them."
    ),
) -> None:
    """Register AdaptFlow's deployments (deployments/prefect.yaml) on a Prefect server, with Prefect's own `prefect deploy`.

    The server is PREFECT_API_URL, else the one `adaptflow stack up` started.

    1. Creates the work pools when missing: 'adaptflow-local' (process) and 'adaptflow-k8s-gpu' (Kubernetes, template infra/k8s/gpu-work-pool.json).

    2. Runs `prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml` from this checkout, with ADAPTFLOW_PROJECT_DIR set to it: runs on 'adaptflow-local' start in this checkout, on the worker of `adaptflow stack up`.

    Each deployment gets its parameter schema (enforced by the server), schedules, pull steps and, for retrain, the trigger on the event adaptflow.data.arrived. Deploying again updates them.
    """
    from adaptflow.infra.deploy import PREFECT_FILE, check_names, ensure_pools, load_specs, run_prefect_deploy  # Prefect's client

    with reported():
        api_url = prefect_env()["PREFECT_API_URL"]
        os.environ["PREFECT_API_URL"] = api_url
        specs = load_specs()
        check_names(specs, name or [])
        created = ensure_pools(specs)
        if created:
            out.print(f"created work pools: {', '.join(created)}")
        out.print(
            f"running prefect deploy for {', '.join(name) if name else 'every deployment'} of {PREFECT_FILE.relative_to(PREFECT_FILE.parents[1])} ..."
        )
        run_prefect_deploy(name, api_url)
    out.print(deployments_table([spec for spec in specs if not name or spec.name in name], api_url))
    out.print(
        "Trigger one from the UI (Deployments -> retrain -> Run -> Custom run) or: prefect deployment run retrain/retrain --param model_name=NAME --param data=PATH"
    )


deploy_app = typer.Typer()
deploy_app.command("deploy")(deploy_command)


def deployments_table(specs: list, api_url: str) -> Table:
    """What was deployed, from prefect.yaml: work pool, schedules and event triggers of each deployment."""
    table = Table(title=f"Deployments on {api_url}", title_style="bold")
    for column in ("deployment", "entrypoint", "work pool", "schedules", "triggers"):
        table.add_column(column)
    for spec in specs:
        schedules = (
            ", ".join(
                f"{s.get('cron') or 'every ' + str(s.get('interval')) + ' s'} ({s.get('slug', '')})"
                for s in spec.config.get("schedules") or []
            )
            or "-"
        )
        triggers = ", ".join(", ".join(t.get("expect") or []) for t in spec.config.get("triggers") or []) or "-"
        table.add_row(spec.name, spec.entrypoint, spec.pool, schedules, triggers)
    return table


def prefect_env() -> dict[str, str]:
    """PREFECT_API_URL: as set, else the server `adaptflow stack up` started."""
    if os.environ.get("PREFECT_API_URL"):
        return {"PREFECT_API_URL": os.environ["PREFECT_API_URL"]}
    info = PrefectStack().status()
    if info is None:
        raise ConfigError(
            Problem(
                "PREFECT_API_URL",
                "is not set and no Prefect server of `adaptflow stack up` is running",
                "run `adaptflow stack up` or set PREFECT_API_URL",
            )
        )
    return {"PREFECT_API_URL": info.api_url}
