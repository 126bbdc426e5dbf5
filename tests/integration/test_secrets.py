"""Security: the secret key appears nowhere, wrong keys are refused clearly, names are
validated, and credentials can come from a prefect-aws block instead of the environment.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from prefect import flow

from adaptflow.flows.adapt import adapt
from adaptflow.flows.predict import predict
from adaptflow.tasks.config import load_config
from adaptflow.tasks.errors import AdaptFlowError, StorageError
from adaptflow.tasks.inference.predict import predict_file
from adaptflow.tasks.promotion import promote_task
from adaptflow.tasks.registry.store import get_alias, get_manifest, register_version, resolve_ref, set_alias
from adaptflow.tasks.storage.s3 import S3Settings, check_access, iter_objects, make_client
from adaptflow.tasks.storage.settings import settings_from_block
from tests.integration.conftest import tiny_config
from tests.integration.prefect_rest import filter_all
from tests.integration.versions import CLEARED_VARS, fit_head, register_head, stack_env, write_labelled

BAD_NAMES = ("../x", "a/b", "x..y")


@pytest.fixture
def env(s3_stack, tmp_path):
    with stack_env(s3_stack, "secrets", tmp_path / "home") as settings:
        yield settings


def api_records(api_url: str, what: str, flow_run_ids: list[str]) -> list[dict]:
    """Every log line or artifact of these flow runs, all pages, over the REST API."""
    return filter_all(api_url, what, {what: {"flow_run_id": {"any_": flow_run_ids}}})


def files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and secret in path.read_bytes()]


def test_the_secret_key_appears_in_no_log_artifact_file_or_object(env, tiny_bert_dir, reviews_csv, tmp_path, prefect_api):
    secret = env.secret_access_key
    assert secret and len(secret) >= 16
    cfg = load_config(tiny_config(tiny_bert_dir, reviews_csv, tmp_path / "work", registry={"model_name": "secret-scan"}))
    summary = adapt(config=cfg)
    state = predict(model="secret-scan", data=str(reviews_csv), output=str(tmp_path / "predictions.csv"), return_state=True)
    state.result()

    @flow
    def promote_first_version():
        return promote_task("secret-scan:1", eval_data=str(reviews_csv))

    gate = promote_first_version(return_state=True)
    assert gate.result().promoted

    run_dir = Path(summary["run_dir"])
    assert (run_dir / "worker.log").is_file() and (run_dir / "model" / "head.safetensors").is_file()
    assert files_holding(tmp_path, secret.encode()) == []  # run dir, worker.log, prepared data, caches, outputs

    run_ids = [get_manifest(env, "secret-scan", 1)["prefect"]["flow_run_id"]] + [str(s.state_details.flow_run_id) for s in (state, gate)]
    logs = api_records(prefect_api, "logs", run_ids)
    artifacts = api_records(prefect_api, "artifacts", run_ids)
    assert any("registered secret-scan version 1" in log["message"] for log in logs)
    assert {"adapt-summary", "evaluation", "predictions-summary", "promotion-decision"} <= {a["key"] for a in artifacts}
    assert not [log["message"] for log in logs if secret in log["message"]]
    assert not [a["key"] for a in artifacts if secret in json.dumps(a)]

    keys = [obj["Key"] for obj in iter_objects(env, env.bucket, env.prefix + "/")]
    assert any(key.endswith("versions/000001/manifest.json") for key in keys) and sum("/blobs/sha256/" in key for key in keys) >= 10
    assert any("/aliases/" in key for key in keys) and any("/decisions/" in key for key in keys)
    client = make_client(env)
    leaking = [key for key in keys if secret.encode() in client.get_object(Bucket=env.bucket, Key=key)["Body"].read()]
    assert leaking == []

    (tmp_path / "canary.txt").write_text(f"key={secret}")  # the file scan does find a secret that is there
    assert files_holding(tmp_path, secret.encode()) == [str(tmp_path / "canary.txt")]


def test_wrong_keys_are_refused_with_a_clear_message(env, tmp_path):
    rows = [("the film was great", "positive")]
    data = write_labelled(tmp_path / "in.csv", rows)
    for bad in (replace(env, secret_access_key="wrong-secret-0123456789"), replace(env, access_key_id="AKNOTAKEY0000000000")):
        with pytest.raises(StorageError) as caught:
            predict_file(bad, "anything", str(data), tmp_path / "out.csv")
        message = str(caught.value)
        assert "rejected the credentials" in message or "access denied" in message
        assert "AWS_SECRET_ACCESS_KEY" in message
        assert env.secret_access_key not in message and "wrong-secret-0123456789" not in message


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_model_and_alias_names_are_refused(env, bad, tiny_bert_dir, tmp_path):
    with pytest.raises(AdaptFlowError) as caught:
        resolve_ref(env, bad)
    assert bad in str(caught.value) and "name" in str(caught.value)
    for ref in (f"{bad}:1", f"{bad}@champion", f"ok@{bad}"):
        with pytest.raises(AdaptFlowError):
            resolve_ref(env, ref)
    with pytest.raises(AdaptFlowError, match="name"):
        register_version(env, bad, tiny_bert_dir, {"strategy": "x"})
    with pytest.raises(AdaptFlowError, match="alias|name"):
        set_alias(env, "ok", bad, 1, expected_etag=None)
    with pytest.raises(AdaptFlowError, match="alias|name"):
        get_alias(env, "ok", bad)
    assert list(iter_objects(env, env.bucket, env.prefix + "/")) == []


# ---- credentials from a Prefect block ----------------------------------------------------


@pytest.fixture
def block_only_env(env, prefect_api, monkeypatch, request):
    """No AWS_* or endpoint variables; ADAPTFLOW_S3_BLOCK names a block saved to the Prefect API."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    for name in (*CLEARED_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "ADAPTFLOW_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    suffix = request.node.name.lower().replace("_", "-").replace("[", "-").strip("]")[-40:]
    credentials = AwsCredentials(
        aws_access_key_id=env.access_key_id,
        aws_secret_access_key=env.secret_access_key,
        region_name=env.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=env.endpoint_url),
    )
    credentials.save(f"creds-{suffix}", overwrite=True)
    S3Bucket(bucket_name=env.bucket, bucket_folder=env.prefix, credentials=credentials).save(f"bucket-{suffix}", overwrite=True)
    return env, f"creds-{suffix}", f"bucket-{suffix}"


def test_settings_from_an_aws_credentials_block_register_a_version(block_only_env, tiny_bert_dir, tmp_path, monkeypatch):
    env, creds, _ = block_only_env
    monkeypatch.setenv("ADAPTFLOW_S3_BLOCK", f"aws-credentials/{creds}")
    settings = settings_from_block()
    assert settings is not None and settings.source == f"Prefect block aws-credentials/{creds}"
    assert (settings.endpoint_url, settings.bucket, settings.prefix) == (env.endpoint_url, env.bucket, env.prefix)
    assert env.secret_access_key not in repr(settings) and env.secret_access_key not in json.dumps(settings.redacted())
    check_access(settings)
    rows = [("the film was great", "positive"), ("the film was awful", "negative")]
    version = register_head(settings, "from-block", tiny_bert_dir, tmp_path, *fit_head(tiny_bert_dir, rows))
    assert resolve_ref(env, "from-block") == ("from-block", version)


def test_an_s3_bucket_block_gives_bucket_and_folder(block_only_env, monkeypatch):
    env, _, bucket = block_only_env
    monkeypatch.delenv("ADAPTFLOW_S3_PREFIX")
    settings = settings_from_block(f"s3-bucket/{bucket}")
    assert (settings.bucket, settings.prefix, settings.access_key_id) == (env.bucket, env.prefix, env.access_key_id)
    check_access(settings)


def test_adapt_flow_registers_with_only_a_block_configured(block_only_env, tiny_bert_dir, reviews_csv, tmp_path, monkeypatch):
    env, creds, _ = block_only_env
    monkeypatch.setenv("ADAPTFLOW_S3_BLOCK", creds)
    assert S3Settings.resolve().source == f"Prefect block aws-credentials/{creds}"
    cfg = tiny_config(
        tiny_bert_dir,
        reviews_csv,
        tmp_path / "work",
        strategy={"name": "transfer_learning", "head_epochs": 1},
        registry={"model_name": "block-run"},
    )
    summary = adapt(config=load_config(cfg))
    assert summary["version"] == 1 and resolve_ref(env, "block-run") == ("block-run", 1)


def test_a_missing_or_malformed_block_is_a_clear_error(prefect_api, monkeypatch):
    monkeypatch.setenv("ADAPTFLOW_S3_BLOCK", "aws-credentials/no-such-block")
    with pytest.raises(StorageError, match="ADAPTFLOW_S3_BLOCK=aws-credentials/no-such-block: no such Prefect block"):
        settings_from_block()
    with pytest.raises(StorageError, match="not a block reference"):
        settings_from_block("secret/x")
