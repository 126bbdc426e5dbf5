"""The CLI's top level: an error no command caught is still one line and an exit code, never a traceback."""

from __future__ import annotations

import sys

import pytest

from adaptflow.flows.cli.app import DEBUG_VAR, main
from adaptflow.tasks.errors import Problem, StorageError
from adaptflow.tasks.storage.s3 import S3Settings


def run_main(monkeypatch: pytest.MonkeyPatch, error: Exception) -> int:
    def resolve() -> S3Settings:
        raise error

    monkeypatch.setattr(S3Settings, "resolve", staticmethod(resolve))
    monkeypatch.setattr(sys, "argv", ["adaptflow", "models", "list"])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code


def test_an_unexpected_error_is_one_line_with_exit_code_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv(DEBUG_VAR, raising=False)
    assert run_main(monkeypatch, RuntimeError("boom [not markup]")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("Internal error: RuntimeError: boom [not markup]") and DEBUG_VAR in line


def test_the_traceback_is_shown_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEBUG_VAR, "1")
    monkeypatch.setattr(sys, "argv", ["adaptflow", "models", "list"])
    monkeypatch.setattr(S3Settings, "resolve", staticmethod(lambda: (_ for _ in ()).throw(RuntimeError("boom"))))
    with pytest.raises(RuntimeError, match="boom"):
        main()


def test_a_user_error_keeps_its_exit_code(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert run_main(monkeypatch, StorageError(Problem("s3://bucket/x", "is damaged"))) == 3
    assert "Error: S3 storage problem: s3://bucket/x: is damaged" in capsys.readouterr().err
