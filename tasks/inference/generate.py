"""Batch generation with a registered causal LM version (``adaptflow predict`` on such a version).

Each prompt is formatted as in training (the tokenizer's chat template, or the plain
``### Prompt / ### Response`` format of :mod:`adaptflow.tasks.data.lm`), answered with the given
sampling settings, and written with the input's columns plus ``generated``. LoRA versions
load the base model named in their manifest and refuse it if its sha256 differs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks.data.lm import Conversation, load_lm_tokenizer, prompt_text
from adaptflow.tasks.errors import AdaptFlowError, ConfigError, DataError, ModelError, Problem, run_all
from adaptflow.tasks.evaluation.lm import generate
from adaptflow.tasks.inference.predict import (
    PREVIEW_ROWS,
    Progress,
    _Reporter,
    check_output,
    default_cache_dir,
    read_rows,
    verified_base_model,
    write_predictions,
)
from adaptflow.tasks.modeling import load_language_model
from adaptflow.tasks.registry.hf_folder import adapter_folder, read_meta
from adaptflow.tasks.registry.store import MANIFEST, pull_version, resolve_ref
from adaptflow.tasks.storage.s3 import S3Settings

GENERATED_COLUMN = "generated"


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: greedy by default; ``do_sample`` with temperature / top-p; a seed for repeatability."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def problems(self) -> list[Problem]:
        found = []
        if self.max_new_tokens < 1:
            found.append(Problem("--max-new-tokens", f"must be 1 or more (got {self.max_new_tokens})"))
        if self.temperature <= 0:
            found.append(Problem("--temperature", f"must be above 0 (got {self.temperature})", "use --greedy for deterministic output"))
        if not 0 < self.top_p <= 1:
            found.append(Problem("--top-p", f"must be in (0, 1] (got {self.top_p})"))
        return found


def version_kind(folder: Path) -> str:
    """'causal_lm', 'masked_lm' or 'sequence_classification' for a pulled version folder."""
    try:
        return read_meta(folder).get("kind", "sequence_classification")
    except ModelError:
        return "sequence_classification"


def load_causal_lm(folder: Path, base_dir: Path | None = None):
    """(model, tokenizer) of a causal LM version folder; adapters are applied to ``base_dir``."""
    meta = read_meta(folder)
    if meta.get("weights") == "adapter":
        from peft import PeftModel  # peft loads slowly: imported for LoRA models only

        if base_dir is None:
            raise ModelError(
                Problem(str(folder), "is a LoRA adapter and needs its base model", f"the base model is {meta.get('base_model')!r}")
            )
        model = PeftModel.from_pretrained(load_language_model(base_dir, use_safetensors=True), adapter_folder(folder))
    else:
        model = load_language_model(folder, use_safetensors=True)
    model.eval()
    return model, load_lm_tokenizer(folder)


@dataclass(frozen=True)
class GenerationResult:
    model: str
    data: str
    output: Path
    prompt_column: str
    rows: int
    preview: list[dict[str, Any]]
    wall_s: float


def generate_file(
    settings: S3Settings,
    ref: str,
    data: str,
    output: str | Path,
    *,
    prompt_column: str = "prompt",
    sampling: Sampling = Sampling(),
    batch_size: int = 8,
    on_progress: Progress | None = None,
    cache_dir: Path | None = None,
) -> GenerationResult:
    """Generate a response for every row's prompt in ``data`` with causal LM version ``ref``; write ``output``."""
    started = time.perf_counter()
    cache_dir = cache_dir or default_cache_dir()
    output = Path(output).expanduser()

    def check_sampling() -> None:
        if sampling.problems() or batch_size < 1:
            raise ConfigError(sampling.problems() + ([Problem("--batch-size", "must be 1 or more")] if batch_size < 1 else []))

    table, _, _, (name, version) = run_all(
        lambda: read_rows(settings, data, cache_dir), lambda: check_output(output), check_sampling, lambda: resolve_ref(settings, ref)
    )
    if prompt_column not in table.frame.columns:
        raise DataError(
            Problem(
                data,
                f"has no column {prompt_column!r} (columns: {', '.join(map(str, table.frame.columns))})",
                "name it with --prompt-column",
            )
        )
    folder = pull_version(settings, name, version)
    if version_kind(folder) != "causal_lm":
        raise ModelError(
            Problem(
                f"model {name}:{version}",
                f"is a {version_kind(folder)} model, not a causal LM",
                "generation needs a version trained with --task causal_lm",
            )
        )
    manifest = json.loads((folder / MANIFEST).read_text())
    meta = read_meta(folder)
    base_dir = verified_base_model(settings, manifest, f"{name}:{version}", cache_dir) if meta.get("weights") == "adapter" else None
    model, tokenizer = load_causal_lm(folder, base_dir)
    prompts = [str(p) if p is not None else "" for p in table.frame[prompt_column]]
    ids = [tokenizer(prompt_text(tokenizer, Conversation(None, p, "")), add_special_tokens=False)["input_ids"] for p in prompts]
    torch.manual_seed(sampling.seed)
    answers: list[str] = []
    for start in range(0, len(ids), batch_size):
        answers += generate(
            model,
            tokenizer,
            ids[start : start + batch_size],
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sampling.do_sample,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            batch_size=batch_size,
        )
        if on_progress is not None:
            on_progress(len(answers), len(ids))
    frame = table.frame.reset_index(drop=True).copy()
    frame[GENERATED_COLUMN] = answers
    write_predictions(frame, output)
    preview = json.loads(frame.head(PREVIEW_ROWS).to_json(orient="records", force_ascii=False))
    return GenerationResult(f"{name}:{version}", data, output, prompt_column, len(frame), preview, time.perf_counter() - started)


@task(name="generate", cache_policy=NO_CACHE)
def generate_task(
    ref: str, data: str, output: str, prompt_column: str = "prompt", sampling: Sampling = Sampling(), batch_size: int = 8
) -> GenerationResult:
    """Generate for every prompt of ``data`` with a registered causal LM version; write ``output``."""
    result = generate_file(
        S3Settings.resolve(),
        ref,
        data,
        output,
        prompt_column=prompt_column,
        sampling=sampling,
        batch_size=batch_size,
        on_progress=_Reporter(f"Generating for {data} with {ref}"),
    )
    get_run_logger().info(f"{result.model}: {result.rows} prompts from {data} -> {result.output} in {result.wall_s:.1f} s")
    return result


def is_causal_version(settings: S3Settings, ref: str) -> bool:
    """True when ``ref`` names a causal LM version (pulled once into the verified cache).

    A reference that cannot be resolved is not causal here: the classification path then
    reports it together with every other input problem.
    """
    try:
        name, version = resolve_ref(settings, ref)
        return version_kind(pull_version(settings, name, version)) == "causal_lm"
    except AdaptFlowError:
        return False
