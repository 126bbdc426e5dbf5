"""``adaptflow models``: browse, promote, pull and clean up the model registry on S3.

The S3 endpoint and keys come from the environment or the local stack, as for
``adaptflow run``. A user error is one message and an exit code (2: bad input, 3: S3
problem), never a traceback.
"""

from __future__ import annotations

import getpass
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from adaptflow.flows.cli.common import console, out, print_json_stdout, reported
from adaptflow.tasks.errors import ConfigError, Problem, StorageError, TransientStorageError
from adaptflow.tasks.registry.store import (
    AliasInfo,
    append_decision,
    delete_version,
    gc,
    get_alias,
    list_aliases,
    list_models,
    list_versions,
    pull_version,
    resolve_ref,
    set_alias,
    signature_state,
    verified_manifest,
)
from adaptflow.tasks.storage.s3 import S3Settings

REF_HELP = "A registered version: NAME (its latest version), NAME:7, or NAME@champion (an alias)."

models_app = typer.Typer(
    help="The model registry on S3: list and inspect registered versions, move aliases such as "
    "'champion' or 'staging', pull a version into a local folder, delete versions and clean up.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


# ---- list / show ---------------------------------------------------------------------
@models_app.command("list")
def list_command(
    name: Optional[str] = typer.Argument(None, help="A model name: list its versions. Empty: list the models."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout (an array of objects) instead of a table."),
) -> None:
    """List the registered models, or the versions of one model with their metrics and aliases.

    Examples:  adaptflow models list     adaptflow models list reviews-lora     adaptflow models list --json | jq
    """
    problems: list[StorageError] = []
    with reported():
        settings = S3Settings.resolve()
        records = _version_records(settings, name, problems) if name else _model_records(settings)
    if as_json:
        print_json_stdout(records)
    elif not records and not problems:
        out.print(f"model '{name}' has no committed version." if name else "No models registered yet.")
        return
    elif records:
        out.print(_versions_table(name, records) if name else _models_table(records))
    for problem in problems:  # the versions that could be read are listed; each refused one is a line, exit code 3
        console.print(f"[bold red]Error[/]: {problem}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(StorageError.exit_code)


def _model_records(settings: S3Settings) -> list[dict[str, Any]]:
    records = []
    for name in list_models(settings):
        versions = list_versions(settings, name)
        if versions:
            aliases = list_aliases(settings, name)
            records.append(
                {
                    "model": name,
                    "versions": len(versions),
                    "latest": versions[-1].version,
                    "registered": versions[-1].committed_at.astimezone(timezone.utc).isoformat(),
                    "aliases": {info.alias: info.version for info in aliases},
                }
            )
    return records


def _models_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="Registered models", title_style="bold")
    for column in ("model", "versions", "latest", "registered", "aliases"):
        table.add_column(column, justify="right" if column in ("versions", "latest") else "left", no_wrap=True)
    for r in records:
        aliases = ", ".join(f"{alias} -> {version}" for alias, version in r["aliases"].items())
        table.add_row(r["model"], str(r["versions"]), str(r["latest"]), _when(datetime.fromisoformat(r["registered"])), aliases)
    return table


def _version_records(settings: S3Settings, name: str, problems: list[StorageError]) -> list[dict[str, Any]]:
    """One record per committed version whose manifest passes pull's checks; each refused one goes to ``problems``."""
    every_alias = list_aliases(settings, name)
    aliases = _aliases_by_version(every_alias)
    records = []
    for info in list_versions(settings, name):
        try:
            manifest = verified_manifest(settings, name, info.version, aliases=every_alias)
        except TransientStorageError:
            raise  # the server, not this version
        except StorageError as exc:
            problems.append(exc)
            continue
        metrics = manifest.get("metrics", {})
        records.append(
            {
                "version": info.version,
                "uri": info.uri,
                "strategy": manifest.get("strategy"),
                "accuracy": metrics.get("accuracy"),
                "macro_f1": metrics.get("macro_f1"),
                "size_bytes": sum(entry["size"] for entry in manifest["files"]),
                "registered": info.committed_at.astimezone(timezone.utc).isoformat(),
                "aliases": aliases.get(info.version, []),
            }
        )
    return records


def _versions_table(name: str, records: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Versions of {name}", title_style="bold")
    for column in ("version", "strategy", "accuracy", "macro-F1", "size", "registered", "aliases"):
        justify = "right" if column in ("version", "accuracy", "macro-F1", "size") else "left"
        table.add_column(column, justify=justify, no_wrap=True)
    for r in records:
        table.add_row(
            str(r["version"]),
            str(r["strategy"] or "-"),
            _number(r["accuracy"]),
            _number(r["macro_f1"]),
            _size(r["size_bytes"]),
            _when(datetime.fromisoformat(r["registered"])),
            ", ".join(r["aliases"]),
        )
    return table


@models_app.command("show")
def show_command(
    ref: str = typer.Argument(..., help=REF_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the version (name, version, aliases, manifest) as JSON on stdout."),
) -> None:
    """Show one version: strategy, base model, data fingerprint, metrics, files, lineage, versions of the code.

    Examples:  adaptflow models show reviews-lora     adaptflow models show reviews-lora@champion --json | jq .manifest.metrics
    """
    with reported():
        settings = S3Settings.resolve()
        name, version = resolve_ref(settings, ref)
        every_alias = list_aliases(settings, name)
        manifest = verified_manifest(settings, name, version, aliases=every_alias)
        aliases = _aliases_by_version(every_alias).get(version, [])
    if as_json:
        print_json_stdout({"name": name, "version": version, "aliases": aliases, "manifest": manifest})
        return
    out.print(f"[bold]{name}:{version}[/]" + (f"  (aliases: {', '.join(aliases)})" if aliases else ""))
    out.print(_summary_table(manifest))
    out.print(_files_table(manifest))


def _summary_table(manifest: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in _summary_rows(manifest):
        if value not in (None, "", [], {}):
            table.add_row(label, str(value))
    return table


def _summary_rows(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    base = manifest.get("base_model", {})
    data = manifest.get("data", {})
    source = data.get("source", {}).get("data", {})
    metrics = manifest.get("metrics", {})
    training = manifest.get("training", {})
    prefect = manifest.get("prefect", {})
    packages = manifest.get("package_versions", {})
    return [
        ("registered", manifest.get("registered_at")),
        ("signature", signature_state(manifest)),
        ("strategy", manifest.get("strategy")),
        ("task", manifest.get("task")),
        ("loads with", _loads_with(manifest)),
        ("base model", _join(base.get("ref"), _short(base.get("sha256")))),
        ("data", _join(source.get("uri"), _short(source.get("sha256")))),
        ("data fingerprint", data.get("key")),
        ("labels", ", ".join(data.get("label_names", []))),
        ("splits", ", ".join(f"{split}: {rows}" for split, rows in data.get("splits", {}).items())),
        ("metrics", ", ".join(f"{key} {_number(value)}" for key, value in metrics.items())),
        ("trainable params", _params(training)),
        ("training", _join(_seconds(training.get("train_runtime_s")), training.get("device"), training.get("mixed_precision"))),
        ("flow run", _join(prefect.get("flow_run_name"), prefect.get("flow_run_id"))),
        ("code version", manifest.get("code_version")),
        ("packages", ", ".join(f"{package} {version}" for package, version in packages.items())),
    ]


def _loads_with(manifest: dict[str, Any]) -> str | None:
    """How a Hugging Face tool loads the version folder (folder layout 2), from the manifest's route."""
    hf = manifest.get("hf", {})
    if manifest.get("task") != "sequence_classification":
        return {"transformers": "transformers", "peft": "peft (adapter on the base model)"}.get(hf.get("route", ""))
    return {
        "transformers": "transformers (standard head)",
        "remote_code": f"transformers, trust_remote_code=True (modeling_adaptflow.py {_short(hf.get('modeling_sha256'))})",
        "peft": "peft (SEQ_CLS adapter on the base model)",
        "peft_backbone": "AdaptFlow, or `models export --merge` for transformers",
    }.get(hf.get("route", ""))


def _files_table(manifest: dict[str, Any]) -> Table:
    files = manifest["files"]
    total = sum(entry["size"] for entry in files)
    table = Table(title=f"{len(files)} files, {_size(total)}", title_justify="left")
    table.add_column("file")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    for entry in files:
        table.add_row(entry["path"], _size(entry["size"]), entry["sha256"][:12])
    return table


# ---- promote ----------------------------------------------------------------------------
@models_app.command("promote")
def promote_command(
    ref: str = typer.Argument(..., help="The version to promote: NAME:7 (or NAME@staging, NAME for the latest)."),
    alias: str = typer.Option("champion", "--alias", "-a", help="The alias to point at it: champion, staging or any name."),
    reason: str = typer.Option("", "--reason", help="Why, recorded with the decision (default: 'manual promotion')."),
    force: bool = typer.Option(False, "--force", help="Skip the checks: allows moving the alias back to an older version."),
    eval_data: Optional[str] = typer.Option(
        None,
        "--if-better-on",
        help="A labelled file (CSV/TSV/JSONL/Parquet or s3://): score the candidate and the alias's current version on it "
        "and move the alias only if the candidate is better by --min-delta.",
    ),
    metric: str = typer.Option("macro_f1", "--metric", help="With --if-better-on: accuracy, macro_f1, macro_precision or macro_recall."),
    min_delta: float = typer.Option(0.0, "--min-delta", help="With --if-better-on: how much better the candidate must be."),
    text_column: Optional[str] = typer.Option(
        None, "--text-column", help="With --if-better-on: the text column (found automatically when there is one)."
    ),
    label_column: str = typer.Option("label", "--label-column", help="With --if-better-on: the label column."),
) -> None:
    """Point an alias at a version (compare-and-swap: a concurrent move is detected, never overwritten).

    The move and its reason are recorded in the model's decision log. Moving an alias to an older version (a rollback) needs --force.
    With --if-better-on FILE it is a promotion gate: both versions are scored on the same rows and the alias moves only for a
    better candidate; the decision is recorded either way. Exit code 0: promoted (or already there), 1: not better.

    Examples:  adaptflow models promote reviews-lora:3 --alias champion --reason "beats v2 on the March sample"
               adaptflow models promote reviews-lora:3 --if-better-on dev.csv --metric accuracy --min-delta 0.005
    """
    if eval_data is not None:
        _gate(ref, alias, eval_data, metric, min_delta, text_column, label_column)
        return
    with reported():
        settings = S3Settings.resolve()
        name, version = resolve_ref(settings, ref)
        current = get_alias(settings, name, alias)
        if current is not None and current.version == version:
            out.print(f"{name}@{alias} already points at version {version}.")
            return
        moved = promote_version(settings, name, version, alias, current, force=force, reason=reason)
    was = f" (was version {current.version})" if current else ""
    out.print(f"{name}@{alias} -> version [bold]{moved.version}[/]{was}")


def _gate(ref: str, alias: str, eval_data: str, metric: str, min_delta: float, text_column: str | None, label_column: str) -> None:
    from adaptflow.tasks.promotion import promote_if_better  # imports torch: the other `models` commands stay fast without

    with reported():
        decision = promote_if_better(
            S3Settings.resolve(),
            ref,
            alias=alias,
            metric=metric,
            min_delta=min_delta,
            eval_data=eval_data,
            text_column=text_column,
            label_column=label_column,
        )
    champion = "none" if decision.champion_score is None else f"{decision.champion_score:.4f}"
    out.print(
        f"{decision.name}:{decision.candidate_version} {metric} {decision.candidate_score:.4f} vs {alias} {champion}: "
        f"{'[bold green]promoted[/]' if decision.promoted else '[yellow]not promoted[/]'} ({decision.reason})"
    )
    if not decision.promoted:
        raise typer.Exit(1)


def promote_version(
    settings: S3Settings, name: str, version: int, alias: str, current: AliasInfo | None, *, force: bool, reason: str
) -> AliasInfo:
    """Move ``alias`` from ``current`` (as read) to ``version`` and record the decision.

    A plain compare-and-swap that only refuses to move an alias backwards without ``force``;
    the metric gate is ``--if-better-on`` (``adaptflow.tasks.promotion.promote_if_better``).
    """
    if current is not None and current.version > version and not force:
        raise ConfigError(
            Problem(
                f"{name}@{alias}",
                f"points at version {current.version}, newer than {version}",
                "pass --force to roll back",
            )
        )
    reason = reason or "manual promotion"
    moved = set_alias(settings, name, alias, version, expected_etag=current.etag if current else None, reason=reason)
    append_decision(
        settings,
        name,
        {
            "kind": "manual_promotion",
            "name": name,
            "alias": alias,
            "candidate_version": version,
            "previous_version": current.version if current else None,
            "promoted": True,
            "forced": force,
            "reason": reason,
            "decided_by": f"{getpass.getuser()}@{socket.gethostname()}",
            "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return moved


# ---- pull / delete / gc -----------------------------------------------------------------
@models_app.command("pull")
def pull_command(
    ref: str = typer.Argument(..., help=REF_HELP),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Copy the files into this folder. Empty: use the read-only local cache folder."
    ),
) -> None:
    """Download a version (every file checked against its sha256) and print the folder.

    A classification version is a Hugging Face model folder: pipeline("text-classification", model=folder) (trust_remote_code=True where its card says so), or AutoPeftModelForSequenceClassification for LoRA; README.md shows how. Versions are cached under $ADAPTFLOW_HOME/cache/pulled: pulling again downloads nothing.

    Example:  python predict.py --model "$(adaptflow models pull reviews-lora@champion)"
    """
    with reported():
        settings = S3Settings.resolve()
        name, version = resolve_ref(settings, ref)
        folder = pull_version(settings, name, version, output)
    console.print(f"pulled {name}:{version}", highlight=False)
    out.print(str(folder), soft_wrap=True, highlight=False, markup=False)


@models_app.command("export")
def export_command(
    ref: str = typer.Argument(..., help=REF_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="A new (or empty) folder to write the Hugging Face model folder into."),
    merge: bool = typer.Option(False, "--merge", help="LoRA versions: merge the adapter into its base and write a full model."),
    to_hub: Optional[str] = typer.Option(None, "--to-hub", help="Also upload the folder to this Hugging Face Hub repository (user/name)."),
) -> None:
    """Write a classification version as a Hugging Face model folder for serving; optionally merge LoRA and upload.

    Example:  adaptflow models export reviews-lora@champion --output served/ --merge
    """
    from adaptflow.tasks.inference.export import export_version  # imports torch: the other `models` commands stay fast without

    with reported():
        result = export_version(S3Settings.resolve(), ref, output, merge=merge, to_hub=to_hub)
    how = "merged, " if result.merged else ""
    console.print(
        f"exported {result.ref} ({how}route {result.route})" + (f" and uploaded: {result.hub_url}" if result.hub_url else ""),
        highlight=False,
    )
    out.print(str(result.output), soft_wrap=True, highlight=False, markup=False)


@models_app.command("delete")
def delete_command(
    ref: str = typer.Argument(..., help="The version to delete, named explicitly: NAME:7."),
    force: bool = typer.Option(False, "--force", help="Delete it even if an alias points at it (the alias is removed too)."),
) -> None:
    """Delete a version: it stops being listed at once; its files are reclaimed by `adaptflow models gc`.

    Refused while an alias points at the version, unless --force. Version numbers are never reused.
    """
    with reported():
        if ":" not in ref:
            raise ConfigError(Problem(f"model reference {ref!r}", "names no version", "write NAME:VERSION, e.g. reviews-lora:3"))
        settings = S3Settings.resolve()
        name, version = resolve_ref(settings, ref)
        removed = delete_version(settings, name, version, force=force)
    also = f"; removed alias {', '.join(removed)}" if removed else ""
    out.print(f"deleted {name}:{version}{also}. Run `adaptflow models gc` later to reclaim its files.")


@models_app.command("gc")
def gc_command(
    name: Optional[str] = typer.Argument(None, help="Only this model. Empty: every model."),
    grace_hours: float = typer.Option(1.0, "--grace-hours", min=0, help="Leave anything younger than this alone."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    force: bool = typer.Option(False, "--force", help="Allow a grace period under the safe minimum (10 minutes)."),
) -> None:
    """Reclaim space: remove abandoned registrations and files that no registered version uses.

    Safe to run while others register: a running registration keeps renewing its claim, and its files and those of every
    committed version are kept. A model with a damaged object is skipped and reported (exit code 3); the others are cleaned.
    """
    with reported():
        report = gc(S3Settings.resolve(), name, grace_seconds=grace_hours * 3600, dry_run=dry_run, force=force)
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb}: {len(report.removed_versions)} abandoned registration(s), {len(report.removed_blobs)} unused "
        f"file(s) ({_size(report.freed_bytes)}), {report.aborted_uploads} unfinished upload(s)"
    )
    for version in report.removed_versions:
        out.print(f"  abandoned registration {version}", highlight=False)
    for blob in report.removed_blobs:
        out.print(f"  unused file {blob}", highlight=False, soft_wrap=True)
    for reason in report.skipped:
        out.print(f"[yellow]skipped[/]: {reason}", highlight=False)
    if report.broken:
        for problem in report.broken:
            console.print(f"[bold red]Error[/]: not cleaned: {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(StorageError.exit_code)


# ---- formatting -------------------------------------------------------------------------
def _aliases_by_version(aliases: list[AliasInfo]) -> dict[int, list[str]]:
    by_version: dict[int, list[str]] = {}
    for info in aliases:
        by_version.setdefault(info.version, []).append(info.alias)
    return by_version


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _short(digest: str | None) -> str | None:
    return f"sha256 {digest[:12]}" if digest else None


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _seconds(value: float | None) -> str | None:
    return f"{value:.1f} s" if value is not None else None


def _params(training: dict[str, Any]) -> str | None:
    trainable, total = training.get("trainable_params"), training.get("total_params")
    if not trainable or not total:
        return None
    return f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"


def _join(*parts: Any) -> str:
    return ", ".join(str(part) for part in parts if part not in (None, ""))
