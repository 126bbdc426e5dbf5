"""Data for language-model training: domain text and prompt/response (or chat) examples.

Two kinds of prepared data, written to the same prepared-data store as the classification
data (:mod:`adaptflow.tasks.data.store`: a ``datasets`` folder + ``manifest.json`` under
``WORK_DIR/prepared/<key>``, reused when the same inputs and settings come again), from
inputs read by the same sources and readers:

- ``domain``: unlabelled text (a ``.txt`` file with one paragraph per line, or the text
  column of a CSV / TSV / JSONL / Parquet file) for continued pre-training. Every text
  is tokenized with the tokenizer's special tokens (decoders: EOS appended) and
  truncated to ``max_length``; ``labels`` are the tokens themselves (masked-LM masking
  happens per batch in the worker).
- ``sft``: prompt/response rows (``prompt_column``/``response_column``) or chat rows
  (``messages_column``: a list of ``{role, content}``; the last assistant message is the
  response). With a chat template the tokenizer formats them; without one, the
  documented plain format ``### Prompt:\\n{prompt}\\n\\n### Response:\\n{response}<eos>``.
  ``labels`` are -100 on every prompt token: only response tokens carry loss.

Evaluation rows are held out (``eval_data``, or a seeded ``eval_fraction`` of the rows)
and never packed. With ``packing`` the training rows are packed greedily into blocks of
at most ``max_length`` tokens; an example is never split across blocks, and the first
token of each example in a block gets no label, so no token is predicted from the
previous example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from adaptflow.tasks.config import DataConfig, LanguageModelConfig
from adaptflow.tasks.data.columns import text_column_of, texts_of
from adaptflow.tasks.data.readers import Table, read_data_file, read_text
from adaptflow.tasks.data.sources import Fetch, download, sha256_file
from adaptflow.tasks.data.store import MANIFEST, PreparedData, open_prepared, publish
from adaptflow.tasks.data.tokenize import tokenizer_identity
from adaptflow.tasks.errors import DataError, ModelError, Problem, run_all
from adaptflow.tasks.storage.settings import is_s3_uri

IGNORE = -100
LM_PREP_FORMAT = 1
PLAIN_PROMPT = "### Prompt:\n{prompt}\n\n### Response:\n"
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}### Prompt:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
"""PLAIN_PROMPT as a chat template, saved with the tokenizer of versions trained on the plain format
(one user message + the generation prompt renders exactly PLAIN_PROMPT)."""
Kind = Literal["domain", "sft"]


@dataclass(frozen=True)
class Example:
    """One tokenized example: ``labels`` is -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int = 0
    response: str = ""


# ---- reading -------------------------------------------------------------------------


def local_path(given: str, work_dir: Path, fetch: Fetch | None, flag: str) -> Path:
    """The local file of ``given`` (an ``s3://`` object is downloaded with ``fetch``)."""
    if is_s3_uri(given):
        return download(given, work_dir, fetch)
    path = Path(given).expanduser()
    if not path.is_file():
        raise DataError(Problem(given, "is a folder, not a file" if path.is_dir() else "no such file", f"check the path given as {flag}"))
    return path


def read_domain_texts(given: str, path: Path, text_column: str | None) -> list[str]:
    """Non-empty paragraphs of a ``.txt`` file (one per line) or of a table's text column."""
    if path.suffix.lower() in (".txt", ".text", ".md"):
        texts = [line.strip() for line in read_text(path, given).splitlines()]
    else:
        table = read_data_file(given, path)
        texts = [t.strip() for t in texts_of(table, text_column_of(table, text_column, {"label"}))]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(Problem(given, "holds no text", "give a .txt file with one paragraph per line, or a table with a text column"))
    return texts


@dataclass(frozen=True)
class Conversation:
    """The prompt side (messages or a plain prompt) and the response of one SFT row."""

    messages: list[dict[str, str]] | None
    prompt: str
    response: str


def read_sft_rows(table: Table, cfg: LanguageModelConfig) -> list[Conversation]:
    """Prompt/response or chat rows (the columns ``cfg`` names); every unusable row is reported (file and row named)."""
    frame = table.frame
    problems: list[Problem] = []
    wanted = [cfg.messages_column] if cfg.messages_column else [cfg.prompt_column, cfg.response_column]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        flags = {cfg.prompt_column: "--prompt-column", cfg.response_column: "--response-column", cfg.messages_column: "--messages-column"}
        raise DataError(
            [
                Problem(
                    table.origin,
                    f"has no column {c!r} (columns: {', '.join(map(str, frame.columns))})",
                    f"name the right column with {flags[c]}",
                )
                for c in missing
            ]
        )
    rows: list[Conversation] = []
    for i in range(len(frame)):
        if cfg.messages_column:
            conv = _conversation(frame[cfg.messages_column].iloc[i])
            if isinstance(conv, str):
                problems.append(
                    Problem(table.where(i), conv, "each row needs a list of {role, content} messages ending with an assistant message")
                )
                continue
            rows.append(conv)
            continue
        prompt, response = (_text(frame[c].iloc[i]) for c in (cfg.prompt_column, cfg.response_column))
        if not prompt or not response:
            empty = cfg.prompt_column if not prompt else cfg.response_column
            problems.append(Problem(table.where(i), f"empty {empty!r}", "fill it in or remove the row"))
            continue
        rows.append(Conversation(None, prompt, response))
    if problems:
        raise DataError(problems[:20] + ([Problem(table.origin, f"... and {len(problems) - 20} more rows")] if len(problems) > 20 else []))
    if not rows:
        raise DataError(Problem(table.origin, "holds no rows", "add prompt/response rows"))
    return rows


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def _conversation(value: Any) -> Conversation | str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return "messages are not a JSON list"
    if not isinstance(value, (list, tuple, np.ndarray)) or not len(value):
        return "messages are empty or not a list"
    messages = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not _text(m.get("content")):
            return "every message needs a 'role' and a non-empty 'content'"
        messages.append({"role": m["role"], "content": _text(m["content"])})
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's (the response to learn)"
    if len(messages) < 2:
        return "needs at least one message before the assistant's response"
    prompt = "\n".join(m["content"] for m in messages[:-1])
    return Conversation(messages[:-1], prompt, messages[-1]["content"])


# ---- tokenizing ----------------------------------------------------------------------


def load_lm_tokenizer(path: Path) -> Any:
    """The model folder's tokenizer, with an EOS (the SEP token when it has none) and a pad token (EOS)."""
    # transformers is heavy: imported only when this runs
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(Problem(str(path), f"cannot load its tokenizer ({exc})", "check the model folder")) from None
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def domain_example(tokenizer: Any, text: str, max_length: int, is_decoder: bool) -> Example:
    """Tokens of one domain text; decoders get EOS appended so documents end visibly."""
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    if is_decoder and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = (ids + [tokenizer.eos_token_id])[-max_length:] if len(ids) < max_length else ids[: max_length - 1] + [tokenizer.eos_token_id]
    return Example(list(ids), list(ids))


def prompt_text(tokenizer: Any, conv: Conversation) -> str:
    """The prompt as the model sees it: the chat template's generation prompt, or the plain format."""
    if getattr(tokenizer, "chat_template", None):
        messages = conv.messages or [{"role": "user", "content": conv.prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_PROMPT.format(prompt=conv.prompt)


def sft_example(tokenizer: Any, conv: Conversation, max_length: int) -> Example:
    """Prompt + response + EOS; labels only on the response and EOS. Long prompts lose their start."""
    prompt_ids = tokenizer(prompt_text(tokenizer, conv), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(conv.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    response_ids = response_ids[: max(1, max_length // 2)] if len(prompt_ids) + len(response_ids) > max_length else response_ids
    prompt_ids = prompt_ids[-(max_length - len(response_ids)) :] if len(prompt_ids) + len(response_ids) > max_length else prompt_ids
    ids = list(prompt_ids) + list(response_ids)
    labels = [IGNORE] * len(prompt_ids) + list(response_ids)
    return Example(ids, labels, len(prompt_ids), conv.response)


def pack(examples: list[Example], block_size: int) -> list[dict[str, list[int]]]:
    """Greedy packing into blocks of at most ``block_size`` tokens, in order, never splitting an example.

    Each block also lists where its examples start (``starts``); the first token of every
    example gets label -100 so nothing is learnt across an example boundary.
    """
    blocks: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "starts": []}
    for ex in examples:
        ids = ex.input_ids[:block_size]
        labels = ex.labels[:block_size]
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > block_size:
            blocks.append(current)
            current = {"input_ids": [], "labels": [], "starts": []}
        current["starts"].append(len(current["input_ids"]))
        current["input_ids"] += ids
        current["labels"] += [IGNORE] + labels[1:]
    if current["input_ids"]:
        blocks.append(current)
    return blocks


# ---- preparing -----------------------------------------------------------------------


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) row indices; at least one row on each side when there are two."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
    return np.sort(order[held:]), np.sort(order[:held])


def _limit(items: list, size: int | None, seed: int) -> list:
    if size is None or size >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:size])
    return [items[i] for i in keep]


def prepare_lm_data(
    kind: Kind,
    cfg: DataConfig,
    lm: LanguageModelConfig,
    tokenizer_dir: Path,
    work_dir: Path,
    *,
    is_decoder: bool,
    fetch: Fetch | None = None,
) -> PreparedData:
    """Tokenize (or reuse) domain text or SFT examples; splits ``train`` and ``eval``."""
    paths = run_all(
        lambda: local_path(cfg.data, work_dir, fetch, "--data"),
        lambda: local_path(cfg.eval_data, work_dir, fetch, "--eval-data") if cfg.eval_data else None,
        catch=DataError,
    )
    inputs = {
        role: {"given": given, "sha256": sha256_file(p)[0]}
        for role, given, p in zip(("data", "eval_data"), (cfg.data, cfg.eval_data), paths)
        if p
    }
    tokenizer_id = tokenizer_identity(Path(tokenizer_dir))
    lm_config = lm.model_dump(mode="json", exclude={"generation_samples", "generation_max_new_tokens"})  # what shapes the data
    payload = {
        "format": LM_PREP_FORMAT,
        "kind": kind,
        "decoder": is_decoder,
        "inputs": inputs,
        "data_config": cfg.model_dump(mode="json"),
        "lm_config": lm_config,
        "tokenizer": tokenizer_id["sha256"],
    }
    key = f"lm-{kind}-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(work_dir) / "prepared" / key
    if (folder / MANIFEST).exists():
        return open_prepared(folder, reused=True)

    tokenizer = load_lm_tokenizer(Path(tokenizer_dir))

    def read(given: str, path: Path) -> list:
        if kind == "domain":
            return read_domain_texts(given, path, cfg.text_column)
        return read_sft_rows(read_data_file(given, path), lm)

    train_rows, eval_rows = run_all(
        lambda: read(cfg.data, paths[0]), lambda: read(cfg.eval_data, paths[1]) if paths[1] else None, catch=DataError
    )
    if eval_rows is None:
        train_idx, eval_idx = _split(len(train_rows), cfg.eval_fraction, cfg.data_seed)
        train_rows, eval_rows = [train_rows[i] for i in train_idx], [train_rows[i] for i in eval_idx]
    if not eval_rows:
        raise DataError(Problem(cfg.data, "is too small to hold out evaluation rows", "add rows or give --eval-data"))
    train_rows = _limit(train_rows, cfg.max_train_samples, cfg.data_seed)
    eval_rows = _limit(eval_rows, cfg.max_eval_samples, cfg.data_seed + 1)

    def encode(row) -> Example:
        if kind == "domain":
            return domain_example(tokenizer, row, cfg.max_length, is_decoder)
        return sft_example(tokenizer, row, cfg.max_length)

    train = [encode(r) for r in train_rows]
    held = [encode(r) for r in eval_rows]
    dataset, stats = _to_dataset(train, held, cfg.max_length if lm.packing else None)
    manifest = {
        "format_version": LM_PREP_FORMAT,
        "key": key,
        "kind": kind,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"data": inputs["data"], "eval_data": inputs.get("eval_data")},
        "label_names": [],
        "splits": {"train": len(train_rows), "eval": len(eval_rows)},
        "rows_per_split_after_packing": {"train": stats["train_rows"], "eval": len(held)},
        "tokens": stats["tokens"],
        "supervised_tokens": stats["supervised"],
        "packing": lm.packing,
        "format": ("chat_template" if getattr(tokenizer, "chat_template", None) else "plain") if kind == "sft" else "text",
        "tokenizer": tokenizer_id,
        "max_length": cfg.max_length,
        "data_config": cfg.model_dump(mode="json"),
        "lm_config": lm_config,
    }
    publish(folder, dataset, manifest)
    return open_prepared(folder, reused=False)


def _to_dataset(train: list[Example], held: list[Example], pack_into: int | None) -> tuple[Any, dict]:
    """The datasets of both splits; training rows packed into blocks of ``pack_into`` tokens when given."""
    # datasets is heavy: imported only when this runs
    from datasets import Dataset, DatasetDict

    if pack_into:
        blocks = pack(train, pack_into)
        train_cols = {"input_ids": [b["input_ids"] for b in blocks], "labels": [b["labels"] for b in blocks]}
    else:
        train_cols = {"input_ids": [e.input_ids for e in train], "labels": [e.labels for e in train]}
    eval_cols = {
        "input_ids": [e.input_ids for e in held],
        "labels": [e.labels for e in held],
        "prompt_length": [e.prompt_length for e in held],
        "response": [e.response for e in held],
    }
    stats = {
        "train_rows": len(train_cols["input_ids"]),
        "tokens": {"train": sum(map(len, train_cols["input_ids"])), "eval": sum(map(len, eval_cols["input_ids"]))},
        "supervised": {"train": sum(sum(1 for x in lab if x != IGNORE) for lab in train_cols["labels"])},
    }
    return DatasetDict({"train": Dataset.from_dict(train_cols), "eval": Dataset.from_dict(eval_cols)}), stats
