"""Errors a user can fix, rendered as one readable message (no traceback wall).

Every check that rejects user input raises an :class:`AdaptFlowError` listing *all*
problems found, each naming where it is (field, file, row) and what to do. The CLI
prints ``str(error)`` and exits with ``error.exit_code``; Prefect shows the same
message as the failed run's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input."""

    where: str
    """The field, file, row or service concerned, e.g. ``training.learning_rate``."""
    what: str
    """What is wrong, in plain words."""
    fix: str = ""
    """What the user can do about it."""

    def render(self) -> str:
        text = f"{self.where}: {self.what}"
        if self.fix:
            text += f" -> {self.fix}"
        return text


class AdaptFlowError(Exception):
    """A problem with the user's input or environment, not a bug in AdaptFlow."""

    exit_code = 2
    title = "AdaptFlow cannot continue"

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem("input", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__(self.problems)

    def __reduce__(self):  # keep the problems when Prefect pickles a failed state
        return (type(self), (self.problems,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"{self.title}: {self.problems[0].render()}"
        lines = [f"{self.title}: {len(self.problems)} problems"]
        lines += [f"  - {p.render()}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(AdaptFlowError):
    title = "Invalid configuration"


class DataError(AdaptFlowError):
    title = "Invalid data"


class ModelError(AdaptFlowError):
    title = "Invalid base model"


class StorageError(AdaptFlowError):
    title = "S3 storage problem"
    exit_code = 3


class TransientStorageError(StorageError):
    """A storage failure that may pass by itself: connection lost, timeout, a 5xx answer, throttling.

    The only kind of error a retry policy retries; a refusal (validation, permission, a
    conflict, a damaged object) fails the same way every time and is never retried.
    """


class TrainingError(AdaptFlowError):
    title = "Training failed"
    exit_code = 4


class WorkerCrashed(TrainingError):
    """The training processes died without reporting an error (killed, out of memory, a lost node).

    The only training failure worth a retry (it resumes from the last checkpoint); an error
    the worker reported (bad input, a bad model, a diverged loss) would fail the same way again.
    """


def raise_together(errors: list[AdaptFlowError], mixed: type[AdaptFlowError] = AdaptFlowError) -> None:
    """Raise one error carrying every problem of ``errors``; its type is kept when all agree, else ``mixed``."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    kinds = {type(e) for e in errors}
    cls = kinds.pop() if len(kinds) == 1 else mixed
    raise cls([p for e in errors for p in e.problems])


def run_all(*steps: Callable[[], Any], catch: type[AdaptFlowError] = AdaptFlowError) -> list[Any]:
    """Run every step even when some fail; then raise all their problems together (see raise_together)."""
    results: list[Any] = []
    errors: list[AdaptFlowError] = []
    for step in steps:
        try:
            results.append(step())
        except catch as exc:
            errors.append(exc)
            results.append(None)
    raise_together(errors)
    return results
