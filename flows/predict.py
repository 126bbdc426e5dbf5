"""The ``predict`` flow: batch inference with a registered model version.

``adaptflow predict --model NAME@champion --data FILE --output FILE`` runs it in-process;
a deployment can run it on a schedule. It writes the output file and publishes a table
artifact (the first rows) and a markdown summary (rows per predicted label).
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from adaptflow.tasks.inference.generate import Sampling, generate_task, is_causal_version
from adaptflow.tasks.inference.predict import DEFAULT_BATCH_SIZE, PredictionResult, predict_task
from adaptflow.tasks.storage.s3 import S3Settings


def summary_markdown(result: PredictionResult) -> str:
    lines = [
        f"# Predictions of `{result.model}`",
        "",
        f"{result.rows} rows of `{result.data}` (text column `{result.text_column}`) -> `{result.output}` in {result.wall_s:.1f} s",
        "",
        "| predicted label | rows | share |",
        "|---|---|---|",
    ]
    for label, count in result.label_counts.items():
        lines.append(f"| {label} | {count} | {count / max(1, result.rows):.1%} |")
    return "\n".join(lines) + "\n"


@flow(name="predict", description="Predict a label for every row of a data file with a registered model version.")
def predict(
    model: str,
    data: str,
    output: str,
    text_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompt_column: str = "prompt",
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> dict:
    """Batch inference: a label per row for classifiers, a generated response per prompt for causal LMs.

    Args:
        model: Registered version: NAME (latest), NAME:7 (version 7) or NAME@champion (an alias).
        data: CSV, TSV, JSON lines or Parquet file (or an s3:// URI of one) with a text column.
        output: File to write, .csv or .jsonl: the input's columns, label, score, prob_<class>.
        text_column: Column holding the text. Empty: the only text column besides 'label'.
        batch_size: Texts per forward pass.
        prompt_column: Causal LM versions: column holding the prompts.
        max_new_tokens: Causal LM versions: tokens generated per prompt at most.
        do_sample: Causal LM versions: sample tokens (with temperature, top_p) instead of greedy decoding.
        temperature: Causal LM versions, with do_sample: below 1 sharper, above 1 more varied.
        top_p: Causal LM versions, with do_sample: sample from the smallest token set holding this probability.
        seed: Causal LM versions: random seed, for repeatable sampling.
    """
    if is_causal_version(S3Settings.resolve(), model):
        sampling = Sampling(max_new_tokens, do_sample, temperature, top_p, seed)
        generated = generate_task(model, data, output, prompt_column, sampling, min(batch_size, 16))
        create_table_artifact(generated.preview, key="generations-preview", description=f"First rows of {generated.output}")
        return {
            "model": generated.model,
            "data": generated.data,
            "output": str(generated.output),
            "rows": generated.rows,
            "wall_s": generated.wall_s,
            "task": "causal_lm",
        }
    result = predict_task(model, data, output, text_column, batch_size)
    create_table_artifact(result.preview, key="predictions-preview", description=f"First rows of {result.output}")
    create_markdown_artifact(summary_markdown(result), key="predictions-summary", description=f"Predictions of {result.model}")
    return {
        "model": result.model,
        "data": result.data,
        "output": str(result.output),
        "rows": result.rows,
        "label_counts": result.label_counts,
        "wall_s": result.wall_s,
    }
