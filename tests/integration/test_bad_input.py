"""Bad input: one clear message naming the file/field/row, a non-zero exit, nothing registered.

The flow-level cases run the real adapt flow (Prefect test harness, real SeaweedFS); the
CLI cases run `adaptflow run` as a user would and read its exit code and output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptflow.flows.adapt import adapt
from adaptflow.tasks.config import load_config
from adaptflow.tasks.errors import AdaptFlowError, ConfigError, DataError, ModelError, StorageError
from adaptflow.tasks.registry.store import list_versions
from tests.integration.conftest import tiny_config, write_reviews

pytestmark = pytest.mark.usefixtures("prefect_api")
NAME = "bad-input"


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _run_flow_expecting(error: type[AdaptFlowError], raw: dict, s3_settings, *needles: str) -> str:
    cfg = load_config({**raw, "registry": {"model_name": NAME}})
    with pytest.raises(error) as info:
        adapt(config=cfg)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert list_versions(s3_settings, NAME) == []
    assert not (Path(raw["work_dir"]) / "runs").exists(), "training started although the input was bad"
    return message


DATA_CASES = {
    "missing file": (lambda d: d / "nope.csv", ["nope.csv", "no such file", "--data"]),
    "empty file": (lambda d: _write(d / "empty.csv", ""), ["empty.csv", "empty"]),
    "malformed csv": (lambda d: _write(d / "bad.csv", 'text,label\n"an open quote,positive\nfine,negative\n'), ["bad.csv"]),
    "non-utf8": (
        lambda d: _write(d / "latin1.csv", "text,label\ngood,positive\ncaf\xe9 bad,negative\n".encode("latin-1")),
        ["latin1.csv", "line 3", "UTF-8"],
    ),
    "missing label column": (
        lambda d: _write(d / "nolabel.csv", "text,sentiment\nnice,positive\nbad,negative\n"),
        ["nolabel.csv", "label", "sentiment"],
    ),
    "empty after cleaning": (lambda d: _write(d / "blank.csv", 'text,label\n"  ",positive\n"",negative\n'), ["blank.csv"]),
    "single class": (
        lambda d: _write(d / "one.csv", "text,label\n" + "".join(f"nice thing {i},positive\n" for i in range(20))),
        ["one.csv", "class"],
    ),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_named_and_nothing_is_registered(case, s3_env, tiny_bert_dir, tmp_path):
    make, needles = DATA_CASES[case]
    data = make(tmp_path)
    _run_flow_expecting(DataError, tiny_config(tiny_bert_dir, data, tmp_path / "work"), s3_env, *needles)


def test_missing_text_column_lists_the_columns(s3_env, tiny_bert_dir, reviews_csv, tmp_path):
    raw = tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work", data={"text_column": "review"})
    _run_flow_expecting(DataError, raw, s3_env, "review", "reviews.csv", "text")


def test_eval_label_unseen_in_training_names_the_row(s3_env, tiny_bert_dir, reviews_csv, tmp_path):
    dev = _write(tmp_path / "dev.csv", "text,label\nit was fine,positive\nit was so-so,meh\n")
    raw = tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work", data={"eval_data": str(dev)})
    _run_flow_expecting(DataError, raw, s3_env, "dev.csv", "row 2", "meh")


def test_too_many_layers_for_the_model(s3_env, tiny_bert_dir, reviews_csv, tmp_path):
    raw = tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work", strategy={"name": "partial_fine_tuning", "last_n_layers": 7})
    _run_flow_expecting(ConfigError, raw, s3_env, "strategy.last_n_layers", "only 2 layers")


def test_folder_that_is_not_a_model(s3_env, reviews_csv, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    _run_flow_expecting(ModelError, tiny_config(not_a_model, reviews_csv, tmp_path / "work"), s3_env, "not-a-model", "config.json")


def _pickle_only_copy(model_dir: Path, dest: Path) -> Path:
    """``model_dir`` with its safetensors weights replaced by a ``pytorch_model.bin`` (never unpickled)."""
    dest.mkdir()
    for f in model_dir.iterdir():
        if f.suffix != ".safetensors":
            (dest / f.name).write_bytes(f.read_bytes())
    (dest / "pytorch_model.bin").write_bytes(b"never unpickled")
    return dest


def test_pickle_only_model_is_refused(s3_env, tiny_bert_dir, reviews_csv, tmp_path):
    pickled = _pickle_only_copy(tiny_bert_dir, tmp_path / "pickled")
    _run_flow_expecting(ModelError, tiny_config(pickled, reviews_csv, tmp_path / "work"), s3_env, "pickled weights", "safetensors")


def test_several_problems_are_reported_together(s3_env, tiny_bert_dir, tmp_path):
    raw = tiny_config(tiny_bert_dir, tmp_path / "nope.csv", tmp_path / "work", strategy={"name": "partial_fine_tuning", "last_n_layers": 9})
    message = _run_flow_expecting(AdaptFlowError, raw, s3_env, "nope.csv", "strategy.last_n_layers")
    assert "2 problems" in message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "env_change, needles",
    [
        ({"ADAPTFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:{port}"}, ["127.0.0.1", "adaptflow stack up"]),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, ["AWS_SECRET_ACCESS_KEY"]),
        ({"ADAPTFLOW_S3_BUCKET": "no-such-bucket"}, ["no-such-bucket"]),
    ],
    ids=["unreachable", "access-denied", "missing-bucket"],
)
def test_s3_problems_stop_the_run_before_training(env_change, needles, s3_env, tiny_bert_dir, reviews_csv, tmp_path, monkeypatch):
    for key, value in env_change.items():
        monkeypatch.setenv(key, value.format(port=_closed_port()))
    message = _run_flow_expecting(StorageError, tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work"), s3_env, *needles)
    assert s3_env.secret_access_key not in message and "wrong-secret" not in message


# ---- through the command line --------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptflow.flows.cli", "run", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def cli_env(s3_env, prefect_api, monkeypatch) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_API_URL"] = prefect_api
    env["COLUMNS"] = "200"
    return env


def test_cli_config_errors_exit_before_any_work(cli_env):
    result = _cli(["--learning-rate", "-1", "--strategy", "lora", "--lora-r", "0", "--batch-size", "0"], cli_env)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    for field in ("training.learning_rate", "strategy.lora_r", "training.batch_size"):
        assert field in output
    assert "Traceback" not in output


def test_cli_bad_data_gives_one_message_and_exit_code(cli_env, tiny_bert_dir, tmp_path, s3_env):
    bad = _write(tmp_path / "latin1.csv", "text,label\ngood,positive\ncaf\xe9 bad,negative\n".encode("latin-1"))
    result = _cli(["--model", str(tiny_bert_dir), "--data", str(bad), "--work-dir", str(tmp_path / "w"), "--model-name", NAME], cli_env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "latin1.csv" in output and "line 3" in output
    assert "Traceback" not in output
    assert list_versions(s3_env, NAME) == []


def test_cli_unreachable_s3_exits_with_storage_code(cli_env, tiny_bert_dir, tmp_path):
    data = write_reviews(tmp_path / "ok.csv", rows=40)
    cli_env["ADAPTFLOW_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    result = _cli(["--model", str(tiny_bert_dir), "--data", str(data), "--work-dir", str(tmp_path / "w")], cli_env)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "S3 storage problem" in output and "Traceback" not in output
    assert not (tmp_path / "w" / "runs").exists()


def test_cli_reports_language_model_settings_before_prefect(cli_env, tiny_bert_dir, tmp_path):
    """The model-dependent LM checks are part of the one preflight: reported before a Prefect server is involved."""
    data = _write(tmp_path / "sft.jsonl", b'{"prompt": "hi", "response": "hello"}\n')
    args = ["--task", "causal_lm", "--strategy", "lora", "--launcher", "pytorchjob", "--model", str(tiny_bert_dir), "--data", str(data)]
    result = _cli([*args, "--work-dir", str(tmp_path / "w"), "--no-register-model"], cli_env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "is an encoder" in output and "'pytorchjob' does not run language-model training yet" in output
    assert "Prefect server:" not in output and "Traceback" not in output
    assert not (tmp_path / "w" / "runs").exists()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


def test_cli_pickled_weights_beside_a_stray_safetensors_exit_2_before_training(cli_env, tiny_bert_dir, tmp_path, s3_env):
    stray = _pickle_only_copy(tiny_bert_dir, tmp_path / "stray")
    (stray / "x.safetensors").write_bytes((tiny_bert_dir / "model.safetensors").read_bytes())
    data = write_reviews(tmp_path / "ok.csv", rows=40)
    started = time.monotonic()
    result = _cli(["--model", str(stray), "--data", str(data), "--work-dir", str(tmp_path / "w"), "--model-name", NAME], cli_env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    (line,) = _error_lines(output)
    assert "pytorch_model.bin" in line and "x.safetensors" in line and "model.safetensors" in line
    assert "Traceback" not in output and "Prefect server:" not in output
    print(f"refused after {time.monotonic() - started:.1f} s")  # before any work: no run folder, no Prefect server (above)
    assert not (tmp_path / "w" / "runs").exists()
    assert list_versions(s3_env, NAME) == []


def test_cli_invalid_model_name_exits_2_within_seconds(cli_env, tiny_bert_dir, tmp_path):
    data = write_reviews(tmp_path / "ok.csv", rows=40)
    started = time.monotonic()
    result = _cli(
        ["--model", str(tiny_bert_dir), "--data", str(data), "--work-dir", str(tmp_path / "w"), "--model-name", "r-views-..-copy"], cli_env
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "registry.model_name" in output and "Traceback" not in output
    print(f"refused after {time.monotonic() - started:.1f} s")
    assert "Prefect server:" not in output  # refused before any Prefect server or run folder
    assert not (tmp_path / "w" / "runs").exists()


def test_odd_data_file_name_derives_a_valid_name_and_registers(s3_env, tiny_bert_dir, tmp_path):
    data = write_reviews(tmp_path / "Rëviews ..(copy) ÿ.csv", rows=60)
    summary = adapt(config=load_config(tiny_config(tiny_bert_dir, data, tmp_path / "work", training={"max_steps": 2})))
    assert summary["model_name"] == "reviews-copy-y-full-fine-tuning"
    assert [v.version for v in list_versions(s3_env, "reviews-copy-y-full-fine-tuning")] == [1]
