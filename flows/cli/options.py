"""CLI options derived from the config model: one option per field of :class:`adaptflow.tasks.config.AdaptConfig`.

The options, their help and their grouping come from the config model, so the CLI, the
Prefect form and the training worker cannot drift apart. ``adaptflow run`` and
``adaptflow compare`` take them all.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Optional

import typer
from pydantic import BaseModel

from adaptflow.tasks.config import STRATEGY_CLASSES, STRATEGY_NAMES, AdaptConfig, load_config
from adaptflow.tasks.errors import ConfigError, Problem

SECTIONS = {
    "data": "Data",
    "training": "Training",
    "launch": "Launch",
    "registry": "Registry",
    "lm": "Language model (--task causal_lm, domain_adaptation)",
}


@dataclass(frozen=True)
class ConfigOption:
    """One CLI option and the config field it sets."""

    param: str  # python identifier == field name
    section: str | None  # None: top level; "strategy": a strategy field
    annotation: Any
    help: str
    panel: str
    strategies: tuple[str, ...] = ()  # for strategy fields: the strategies having it

    @property
    def flag(self) -> str:
        return "--" + self.param.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return any(typing.get_origin(a) is list for a in (self.annotation, *typing.get_args(self.annotation)))


def _cli_type(annotation: Any) -> tuple[Any, str]:
    """A click-friendly type for a field annotation, and extra help text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args else annotation
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        return Enum(f"Choice_{'_'.join(map(str, choices))}", {str(c): str(c) for c in choices}), ""
    if typing.get_origin(base) is list:
        return str, " Comma-separated."
    if base in (int, float, str, bool):
        return base, ""
    return str, ""


def _describe(field, default: Any) -> str:
    text = field.description or ""
    if default not in (None, "", [], ()) and not isinstance(default, BaseModel):
        text += f" (default: {default})"
    return text


def config_options() -> list[ConfigOption]:
    options: list[ConfigOption] = []
    for name, field in AdaptConfig.model_fields.items():
        if name in SECTIONS:
            section_model = field.default_factory if field.default_factory else type(field.default)
            for sub, subfield in section_model.model_fields.items():
                options.append(ConfigOption(sub, name, subfield.annotation, _describe(subfield, subfield.default), SECTIONS[name]))
        elif name == "strategy":
            seen: dict[str, ConfigOption] = {}
            for sname, cls in STRATEGY_CLASSES.items():
                for sub, subfield in cls.model_fields.items():
                    if sub == "name":
                        continue
                    prev = seen.get(sub)
                    holders = (prev.strategies if prev else ()) + (sname,)
                    seen[sub] = ConfigOption(
                        sub, "strategy", subfield.annotation, _describe(subfield, subfield.default), "Strategy", holders
                    )
            for opt in seen.values():
                if len(opt.strategies) < len(STRATEGY_CLASSES):
                    opt = ConfigOption(
                        opt.param,
                        opt.section,
                        opt.annotation,
                        opt.help + f" (only for: {', '.join(opt.strategies)})",
                        opt.panel,
                        opt.strategies,
                    )
                options.append(opt)
        else:
            options.append(ConfigOption(name, None, field.annotation, _describe(field, field.default), "Model"))
    return options


def options_to_config(values: dict[str, Any], strategy: str | None, base: dict[str, Any] | None = None) -> AdaptConfig:
    """Merge a config file's dict with the options given on the command line, then validate."""
    raw: dict[str, Any] = json.loads(json.dumps(base or {}))
    problems = []
    chosen = strategy or (raw.get("strategy") or {}).get("name") or "transfer_learning"
    raw.setdefault("strategy", {})
    if raw["strategy"].get("name") != chosen:
        raw["strategy"] = {"name": chosen}
    for opt in config_options():
        value = values.get(opt.param)
        if value is None:
            continue
        if isinstance(value, Enum):
            value = value.value
        if opt.is_list:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if opt.section is None:
            raw[opt.param] = value
        elif opt.section == "strategy":
            if chosen not in opt.strategies:
                problems.append(Problem(opt.flag, f"does not apply to strategy {chosen!r}", f"it applies to: {', '.join(opt.strategies)}"))
                continue
            raw["strategy"][opt.param] = value
        else:
            raw.setdefault(opt.section, {})[opt.param] = value
    try:
        cfg = load_config(raw)
    except ConfigError as exc:
        flags = {opt.param: opt.flag for opt in config_options()}
        for p in exc.problems:
            flag = flags.get(p.where.rsplit(".", 1)[-1])
            problems.append(Problem(f"{p.where} ({flag})", p.what, p.fix) if flag else p)
    if problems:
        raise ConfigError(problems)
    return cfg


def with_config_options(func):
    """Give ``func`` one keyword option per config field (typer reads ``__signature__``)."""
    params = [p for p in inspect.signature(func).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for opt in config_options():
        cli_type, extra = _cli_type(opt.annotation)
        if cli_type is bool:
            default = typer.Option(
                None, f"{opt.flag}/--no-{opt.flag[2:]}", help=opt.help + extra, rich_help_panel=opt.panel, show_default=False
            )
        else:
            default = typer.Option(None, opt.flag, help=opt.help + extra, rich_help_panel=opt.panel, show_default=False)
        params.append(inspect.Parameter(opt.param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Optional[cli_type]))
    func.__signature__ = inspect.Signature(params)
    return func


StrategyChoice = Enum("StrategyChoice", {n: n for n in STRATEGY_NAMES})
