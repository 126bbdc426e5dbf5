"""``adaptflow stack``: the local S3-compatible server (SeaweedFS) and a Prefect server with a process worker."""

from __future__ import annotations

import typer

from adaptflow.flows.cli.common import console, fail, out
from adaptflow.infra.prefect_stack import PrefectStack
from adaptflow.infra.ray_stack import RayStack
from adaptflow.infra.stack import LocalS3Stack
from adaptflow.tasks.config import adaptflow_home
from adaptflow.tasks.errors import AdaptFlowError

stack_app = typer.Typer(
    help="The local S3-compatible server (SeaweedFS) used by default, a Prefect server with a process worker, "
    "and (--ray) a Ray head. Data is kept across restarts.",
    no_args_is_help=True,
)


def _stack() -> LocalS3Stack:
    return LocalS3Stack(adaptflow_home())


@stack_app.command("up")
def stack_up(
    prefect: bool = typer.Option(
        True,
        "--prefect/--no-prefect",
        help="Also start a Prefect server (SQLite in $ADAPTFLOW_HOME/stack/prefect; PostgreSQL when "
        "PREFECT_API_DATABASE_CONNECTION_URL is set) and a process worker on the pool 'adaptflow-local'.",
    ),
    new_prefect_database: bool = typer.Option(
        False,
        "--new-prefect-database",
        help="Start Prefect with an empty SQLite database; the old one is kept beside it as prefect.db.bak-<time>. "
        "For a database written by another Prefect release, which this one cannot open.",
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Also start a local Ray head (needs the 'ray' extra), which `adaptflow run --launcher ray` then uses "
        "when no --ray-address or RAY_ADDRESS is given. Other machines join it with `ray start --address=<its address>`.",
    ),
    ray_cpus: int = typer.Option(0, "--ray-cpus", min=0, help="CPUs the Ray head hands to training workers (0: all of this machine's)."),
) -> None:
    """Start the local S3 server (free ports, generated credentials, data under $ADAPTFLOW_HOME/stack) and a Prefect server + worker."""
    try:
        stack = _stack()
        info = stack.up()
        out.print(f"S3 server running at [bold]{info.endpoint_url}[/] (pid {info.pid}); bucket 'adaptflow'.")
        if prefect:
            # runs resolve S3 as the CLI does: environment, else this stack
            served = PrefectStack(adaptflow_home()).up(new_database=new_prefect_database)
            out.print(
                f"Prefect server at [bold]{served.ui_url}[/] (pid {served.server_pid}, {served.database}); "
                f"process worker on '{served.work_pool}' (pid {served.worker_pid})."
            )
            out.print(
                f"`adaptflow run`, `compare`, `retrain` and `predict` now report to this server: their runs show at {served.ui_url}/runs"
            )
            out.print("Next: `adaptflow deploy`, then trigger runs from the UI (Deployments -> Run).")
        if ray:
            head = RayStack(adaptflow_home()).up(cpus=ray_cpus or None)
            out.print(
                f"Ray head at [bold]{head.address}[/] (pid {head.pid}, {head.cpus} CPUs): `adaptflow run --launcher ray` uses it; "
                f"more nodes join with `ray start --address={head.address}`."
            )
    except AdaptFlowError as exc:
        raise fail(exc) from None
    out.print('`adaptflow run` uses the S3 server automatically; other tools: eval "$(adaptflow stack env)"')


@stack_app.command("down")
def stack_down() -> None:
    """Stop the Ray head, the Prefect worker and server and the S3 server started by `stack up` (their data stays for the next `up`)."""
    try:
        if RayStack(adaptflow_home()).down():
            out.print("Ray head stopped.")
        if PrefectStack(adaptflow_home()).down():
            out.print("Prefect worker and server stopped.")
        _stack().down()
    except AdaptFlowError as exc:
        raise fail(exc) from None
    out.print("S3 server stopped.")


@stack_app.command("status")
def stack_status() -> None:
    """Say whether the local S3 server is running, and where."""
    info = _stack().status()
    if info is None:
        out.print("S3 server: not running (start it with `adaptflow stack up`).")
        raise typer.Exit(1)
    out.print(f"S3 server: running at {info.endpoint_url} (pid {info.pid}), data in {info.data_dir}")
    prefect_stack = PrefectStack(adaptflow_home())
    served = prefect_stack.status()
    if served is None:
        out.print("Prefect server: not running (`adaptflow stack up` starts it).")
    else:
        worker = (
            f"worker pid {served.worker_pid}"
            if prefect_stack.worker_running(served)
            else "no worker (a run started it in the background; `adaptflow stack up` adds one)"
        )
        out.print(f"Prefect server: running at {served.ui_url} (pid {served.server_pid}, {served.database}); {worker}")
    head = RayStack(adaptflow_home()).status()
    if head is not None:
        out.print(f"Ray head: running at {head.address} (pid {head.pid}, {head.cpus} CPUs)")


@stack_app.command("env")
def stack_env() -> None:
    """Print `export` lines for the local S3 server, for other tools: eval "$(adaptflow stack env)"."""
    stack = _stack()
    if stack.status() is None:
        console.print("S3 server is not running: start it with `adaptflow stack up`.")
        raise typer.Exit(1)
    for key, value in stack.env().items():
        out.print(f"export {key}={value}", highlight=False)
    served = PrefectStack(adaptflow_home()).status()
    if served is not None:
        out.print(f"export PREFECT_API_URL={served.api_url}", highlight=False)
    head = RayStack(adaptflow_home()).status()
    if head is not None:
        out.print(f"export RAY_ADDRESS={head.address}", highlight=False)
