"""How S3 failures are classified: which are transient (retried) and which are refusals (never retried)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from adaptflow.tasks.errors import StorageError, TransientStorageError
from adaptflow.tasks.registry.store import retry_transient
from adaptflow.tasks.storage.s3 import translate_error


def client_error(status: int, code: str, headers: dict[str, str] | None = None) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "details"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {"x-amz-request-id": "1", **(headers or {})}},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    "exc",
    [
        client_error(503, "SlowDown"),
        client_error(500, "InternalError"),
        client_error(429, "TooManyRequests"),
        client_error(400, "RequestTimeout"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ],
)
def test_transient_failures_are_retried(exc: Exception) -> None:
    error = translate_error(exc, "upload", "s3://bucket/key", "http://127.0.0.1:1")
    assert isinstance(error, TransientStorageError)
    assert retry_transient(None, None, SimpleNamespace(data=error))


@pytest.mark.parametrize(
    "exc",
    [client_error(403, "AccessDenied"), client_error(400, "InvalidArgument"), client_error(412, "PreconditionFailed")],
)
def test_refusals_are_never_retried(exc: Exception) -> None:
    error = translate_error(exc, "upload", "s3://bucket/key", "http://127.0.0.1:1")
    assert isinstance(error, StorageError) and not isinstance(error, TransientStorageError)
    assert not retry_transient(None, None, SimpleNamespace(data=error))
    assert not retry_transient(None, None, SimpleNamespace(data=ValueError("a manifest key set by the registry")))


def test_a_404_without_s3_headers_names_the_endpoint_not_the_prefix() -> None:
    plain = ClientError(
        {"Error": {"Code": "404", "Message": "Not Found"}, "ResponseMetadata": {"HTTPStatusCode": 404, "HTTPHeaders": {}}}, "HeadObject"
    )
    text = str(translate_error(plain, "read the manifest", "s3://bucket/models/x/manifest.json", "http://web:80"))
    assert "not an S3 server" in text and "ADAPTFLOW_S3_ENDPOINT_URL" in text and "ADAPTFLOW_S3_PREFIX" not in text
    s3_missing = str(translate_error(client_error(404, "404"), "read the manifest", "s3://bucket/models/x/manifest.json"))
    assert "no such object" in s3_missing


def test_the_register_tasks_use_the_transient_only_retry_policy() -> None:
    from adaptflow.tasks.registry.lm_manifest import register_lm_task
    from adaptflow.tasks.registry.manifest import register_task

    for task in (register_task, register_lm_task):
        assert task.retries == 2 and task.retry_condition_fn is retry_transient
