"""The ``adaptflow`` command: the root that gathers the subcommands, each loaded only when it runs.

    adaptflow run | compare       flows/cli/run.py, flows/cli/compare.py (options: flows/cli/options.py)
    adaptflow predict             flows/cli/predict.py
    adaptflow retrain | deploy    flows/cli/retrain.py
    adaptflow models ...          flows/cli/models.py
    adaptflow runs gc             flows/cli/runs.py
    adaptflow stack ...           flows/cli/stack.py

Start-up cost is structural. The root knows its commands from :data:`COMMANDS` (name,
module, one-line help) and imports a command's module only when that command is invoked,
so ``adaptflow --help`` loads none of them. A command module imports only light modules at
its top (typer, rich, pydantic configs, the stacks' state files); the flow or library it
drives (torch, Prefect, the Hugging Face libraries) is imported in the command's body once
its input passed the checks. tests/unit/test_cli_imports.py runs every ``--help``, ``stack
status``/``env`` and preflight refusals and fails if any of them imports torch,
transformers, datasets, accelerate, peft, ray or Prefect; it also checks that this lazy root
prints the same help as one built from every command.

The subcommand modules share flows/cli/common.py (consoles, errors, Prefect connection,
progress bars) and never import this module.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from adaptflow.flows.cli.common import console, fail
from adaptflow.tasks.errors import AdaptFlowError

DEBUG_VAR = "ADAPTFLOW_DEBUG"
"""Set to show the traceback of an internal error instead of one line."""


@dataclass(frozen=True)
class Command:
    """A subcommand of ``adaptflow``: where its Typer app is, and the line the root's help shows for it."""

    name: str
    module: str
    app: str
    summary: str
    """The first paragraph of the command's own help (a test keeps them equal)."""
    group: bool = False
    """A group of subcommands (``adaptflow stack up``), kept a group even when it has one (``runs gc``)."""


COMMANDS = (
    Command(
        "retrain",
        "adaptflow.flows.cli.retrain",
        "retrain_app",
        "Retrain a model if its data changed, and promote the result only if it is better.",
    ),
    Command(
        "deploy",
        "adaptflow.flows.cli.retrain",
        "deploy_app",
        "Register AdaptFlow's deployments (deployments/prefect.yaml) on a Prefect server, with Prefect's own `prefect deploy`.",
    ),
    Command(
        "run", "adaptflow.flows.cli.run", "run_app", "Run the [bold]adapt[/] flow: prepare data, train, evaluate, register the model to S3."
    ),
    Command(
        "predict",
        "adaptflow.flows.cli.predict",
        "predict_app",
        "Run the [bold]predict[/] flow: label every row of a file with a registered classifier, or generate a\n"
        "response to every prompt with a registered causal LM (written to a 'generated' column).",
    ),
    Command(
        "compare",
        "adaptflow.flows.cli.compare",
        "compare_app",
        "Run the [bold]compare[/] flow: every strategy on the same data, evaluation set and budget, then one report.",
    ),
    Command(
        "stack",
        "adaptflow.flows.cli.stack",
        "stack_app",
        "The local S3-compatible server (SeaweedFS) used by default, a Prefect server with a process worker, and (--ray) a Ray "
        "head. Data is kept across restarts.",
        group=True,
    ),
    Command(
        "models",
        "adaptflow.flows.cli.models",
        "models_app",
        "The model registry on S3: list and inspect registered versions, move aliases such as 'champion' or 'staging', pull a "
        "version into a local folder, delete versions and clean up.",
        group=True,
    ),
    Command(
        "runs", "adaptflow.flows.cli.runs", "runs_app", "Run folders on this machine (WORK/runs/<model>/<time>-<run id>/).", group=True
    ),
)


def load(command: Command) -> click.Command:
    """The real click command behind ``command``: imports its module."""
    sub_app = getattr(importlib.import_module(command.module), command.app)
    loaded = typer.main.get_group(sub_app) if command.group else typer.main.get_command(sub_app)
    loaded.name = command.name
    return loaded


class LazyCommands(TyperGroup):
    """The root group: lists every command from :data:`COMMANDS`, loads one only to run it (or show its own help)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for command in COMMANDS:
            self.add_command(click.Command(command.name, help=command.summary), command.name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        spec = next((c for c in COMMANDS if args and c.name == args[0]), None)
        if spec is not None and not isinstance(self.commands[spec.name], (typer.core.TyperCommand, TyperGroup)):
            self.commands[spec.name] = load(spec)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=LazyCommands,
    help="AdaptFlow: adapt a pre-trained language model to your task (transfer learning, partial or full "
    "fine-tuning, LoRA), measure it, and register it to S3.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@app.callback()
def _root() -> None:
    """The root has no options of its own; the callback makes Typer build a group for the commands."""


def main() -> None:
    # No usage telemetry from the temporary Prefect server (its own process reads this): there may
    # be no network, and its failures print tracebacks that are not the user's problem.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
