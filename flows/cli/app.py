"""The ``adaptflow`` command: the root that gathers the subcommands.

    adaptflow run | compare       flows/cli/run.py, flows/cli/compare.py (options: flows/cli/options.py)
    adaptflow predict             flows/cli/predict.py
    adaptflow retrain | deploy    flows/cli/retrain.py
    adaptflow models ...          flows/cli/models.py
    adaptflow runs gc             flows/cli/runs.py
    adaptflow stack ...           flows/cli/stack.py

The subcommand modules share flows/cli/common.py (consoles, errors, Prefect connection,
progress bars) and never import this module.
"""

from __future__ import annotations

import os
import sys

import typer
from prefect.settings import temporary_settings
from rich.markup import escape

from adaptflow.flows.cli.common import console, fail
from adaptflow.flows.cli.compare import compare_command
from adaptflow.flows.cli.models import models_app
from adaptflow.flows.cli.options import with_config_options
from adaptflow.flows.cli.predict import predict_command
from adaptflow.flows.cli.retrain import deploy_command, retrain_command
from adaptflow.flows.cli.run import run_command
from adaptflow.flows.cli.runs import runs_app
from adaptflow.flows.cli.stack import stack_app
from adaptflow.infra.prefect_stack import cli_settings
from adaptflow.tasks.errors import AdaptFlowError

DEBUG_VAR = "ADAPTFLOW_DEBUG"
"""Set to show the traceback of an internal error instead of one line."""

app = typer.Typer(
    help="AdaptFlow: adapt a pre-trained language model to your task (transfer learning, partial or full "
    "fine-tuning, LoRA), measure it, and register it to S3.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
WIDE = {"max_content_width": 120}
app.add_typer(stack_app, name="stack")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.command("retrain", context_settings=WIDE)(retrain_command)
app.command("deploy")(deploy_command)
app.command("run", context_settings=WIDE)(with_config_options(run_command))
app.command("predict")(predict_command)
app.command("compare", context_settings=WIDE)(with_config_options(compare_command))


def main() -> None:
    # No usage telemetry from the temporary Prefect server (its own process reads this): there may
    # be no network, and its failures print tracebacks that are not the user's problem.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with temporary_settings(updates=cli_settings()):
        try:
            app()
        except AdaptFlowError as exc:  # one that no command caught: still one message and its exit code
            sys.exit(fail(exc).exit_code)
        except Exception as exc:  # a bug, not the user's input: one line, the traceback only on request
            if os.environ.get(DEBUG_VAR):
                raise
            what = escape(f"{type(exc).__name__}: {exc}")
            console.print(
                f"[bold red]Internal error[/]: {what} -> rerun with {DEBUG_VAR}=1 for the traceback, and report it",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)


if __name__ == "__main__":
    main()
