"""The Prefect REST API as the tests call it: retried the way Prefect's own client retries.

A Prefect server on SQLite answers 503 when a write meets another one (SQLITE_BUSY on a
deferred transaction does not wait), which happens on a 2-core CI machine with a worker
training beside the server. Prefect's client retries 503 and dropped connections with a
growing pause; a test that calls the API raw must do the same, or it fails on load that
a user never sees.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

ATTEMPTS = 8
FIRST_PAUSE_S = 0.5
LONGEST_PAUSE_S = 8.0
RETRIED_STATUS = (502, 503)


def rest(api_url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One call to ``api_url + path``; a 502/503 or a dropped connection is tried again (``ATTEMPTS`` in all)."""
    kwargs.setdefault("timeout", 30)
    pause = FIRST_PAUSE_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = httpx.request(method, api_url + path, **kwargs)
        except httpx.TransportError:
            if attempt == ATTEMPTS:
                raise
        else:
            if response.status_code not in RETRIED_STATUS or attempt == ATTEMPTS:
                return response
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE_S)
    raise AssertionError("unreachable: the last attempt returns or raises")


def rest_json(api_url: str, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON body of a call that must succeed (an HTTP error status raises)."""
    response = rest(api_url, method, path, **kwargs)
    response.raise_for_status()
    return response.json()


def filter_all(api_url: str, what: str, body: dict[str, Any], page: int = 200) -> list[dict]:
    """Every record ``POST /{what}/filter`` matches, page by page."""
    records: list[dict] = []
    while True:
        batch = rest_json(api_url, "POST", f"/{what}/filter", json={**body, "limit": page, "offset": len(records)})
        records += batch
        if len(batch) < page:
            return records
