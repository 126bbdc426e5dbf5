"""``adaptflow predict``: the predict flow from the command line, with a progress bar over the batches."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from adaptflow.flows.cli.common import console, out, prefect_session


def predict_command(
    model: str = typer.Option(..., "--model", "-m", help="Registered version: NAME (latest), NAME:7, or NAME@champion (an alias)."),
    data: str = typer.Option(
        ..., "--data", "-d", help="CSV, TSV, JSON lines or Parquet file (or s3:// URI) with a text column; labels not needed."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="File to write, .csv or .jsonl: the input's columns + label, score, prob_<class>."
    ),
    text_column: Optional[str] = typer.Option(
        None, "--text-column", help="Column holding the text. Empty: the only text column besides 'label'."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts per forward pass."),
    prompt_column: str = typer.Option(
        "prompt",
        "--prompt-column",
        help="Causal LM versions: column holding the prompts.",
        rich_help_panel="Generation (causal LM versions)",
    ),
    max_new_tokens: int = typer.Option(
        64, "--max-new-tokens", min=1, help="Tokens generated per prompt at most.", rich_help_panel="Generation (causal LM versions)"
    ),
    do_sample: bool = typer.Option(
        False,
        "--sample/--greedy",
        help="Sample tokens (with --temperature, --top-p) or always take the most likely one.",
        rich_help_panel="Generation (causal LM versions)",
    ),
    temperature: float = typer.Option(
        1.0, "--temperature", help="With --sample: below 1 sharper, above 1 more varied.", rich_help_panel="Generation (causal LM versions)"
    ),
    top_p: float = typer.Option(
        1.0,
        "--top-p",
        help="With --sample: sample from the smallest set of tokens holding this probability.",
        rich_help_panel="Generation (causal LM versions)",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed, for repeatable sampling.", rich_help_panel="Generation (causal LM versions)"),
) -> None:
    """Run the [bold]predict[/] flow: label every row of a file with a registered classifier, or generate a
    response to every prompt with a registered causal LM (written to a 'generated' column).

    Example:  adaptflow predict --model reviews-lora@champion --data new_reviews.csv --output predictions.csv
    Example:  adaptflow predict --model support-lora@champion --data prompts.jsonl --output answers.jsonl --max-new-tokens 128 --sample --temperature 0.7
    """
    from transformers.utils import logging as hf_logging  # heavy: only once a prediction runs

    from adaptflow.flows.predict import predict  # imports torch: `adaptflow --help` and `models` stay fast without
    from adaptflow.tasks.inference.predict import add_progress_listener  # imports torch, as above

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        redirect_stderr=True,
        redirect_stdout=True,
    )
    bar = progress.add_task(f"predicting with {model}", total=None, visible=False)

    def on_batch(done: int, total: int) -> None:
        if not progress.tasks[0].visible:  # the clock starts with the first batch, not with Prefect's start-up
            progress.reset(bar, total=total, visible=True)
        progress.update(bar, completed=done)

    remove = add_progress_listener(on_batch)
    hf_logging.disable_progress_bar()  # one bar: ours
    try:
        with prefect_session(), progress:
            result = predict(
                model=model,
                data=data,
                output=str(output),
                text_column=text_column,
                batch_size=batch_size,
                prompt_column=prompt_column,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
    finally:
        remove()
    if result.get("task") == "causal_lm":
        out.print(f"{result['rows']} prompts answered with [bold]{result['model']}[/] -> {result['output']}")
        return
    counts = ", ".join(f"{label}: {n}" for label, n in result["label_counts"].items())
    out.print(f"{result['rows']} rows predicted with [bold]{result['model']}[/] -> {result['output']} ({counts})")


predict_app = typer.Typer()
predict_app.command("predict")(predict_command)
