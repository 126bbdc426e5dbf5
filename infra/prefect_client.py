"""Which Prefect server a CLI process's flow runs report to. Imports Prefect: only where a flow runs.

The order, first match wins:

1. an explicit ``PREFECT_API_URL`` (environment or Prefect profile);
2. the Prefect server of this ``ADAPTFLOW_HOME``'s stack: the one ``adaptflow stack up``
   started, or the background one an earlier run started (3.);
3. none running: start the stack's server in the background, without a worker, and report
   to it. It keeps running for the next runs, which then start in a second instead of
   paying Prefect's start-up (9 s on a new database, 4 s after) every time, and their runs
   stay visible in its UI. ``adaptflow stack down`` stops it; ``stack up`` adds the worker.
   Several runs started at once start one server: :meth:`PrefectStack.up` holds a lock.

``ADAPTFLOW_PREFECT_SERVER=temporary`` (for who wants no process left running) restores
Prefect's own behaviour: a temporary server inside the process, stopped when it exits
(see :func:`_temporary_server` for how several start at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings, temporary_settings

from adaptflow.infra.prefect_stack import SERVER_VAR, PrefectStack, server_mode
from adaptflow.infra.stack import HOST
from adaptflow.tasks.config import adaptflow_home

BACKGROUND_START_TIMEOUT_S = 180
"""Four runs started at once on 2 cores took longer than Prefect's 20 s default to bring a server up."""


@contextlib.contextmanager
def prefect_server(say: Callable[[str], None]) -> Iterator[None]:
    """Inside the block, flow runs of this process report to the server chosen by the rules above; ``say`` names it."""
    updates: dict[Any, Any] = {}
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = BACKGROUND_START_TIMEOUT_S
    explicit = get_current_settings().api.url
    if explicit:
        say(f"Prefect server: {_ui(explicit)} (the run shows in its UI)")
    elif server_mode() == "temporary":
        say(f"Prefect server: a temporary one in this process ({SERVER_VAR}=temporary)")
    else:
        started: list[bool] = []

        def starting() -> None:
            started.append(True)
            say("Prefect server: none running; starting one in the background for this and later runs ...")

        info = PrefectStack(adaptflow_home()).up(worker=False, timeout=BACKGROUND_START_TIMEOUT_S, on_start=starting)
        how = "started in the background; `adaptflow stack down` stops it" if started else "the run shows in its UI"
        say(f"Prefect server: {info.ui_url} ({how})")
        updates[PREFECT_API_URL] = info.api_url
    with temporary_settings(updates=updates):
        if not get_current_settings().api.url:
            _temporary_server()
        yield


def _ui(api_url: str) -> str:
    return api_url.removesuffix("/").removesuffix("/api")


def _temporary_server() -> None:
    """Start Prefect's temporary server for this process, on a port no other process can be starting on.

    Prefect picks a temporary server's port at random in 8000-8999 and checks that it is
    free, but its uvicorn binds it only after the server's start-up (seconds; a minute on a
    loaded machine). Two processes that pick the same port in that gap both see a healthy
    server: the second one's uvicorn fails to bind (exit code 3), but its health check was
    answered by the first one's server, so it reports its flow run there, and gets
    ``Connection refused`` mid-run when the first process exits and stops its server. That
    was the four-runs-at-once test's failure (reproduced by forcing two processes onto one port).

    So the servers of this PREFECT_HOME start one at a time, under a lock file, each on a port
    the kernel hands out while the lock is held: no other process picks a port until this
    server listens on its own. The lock also lets the first one create Prefect's SQLite
    database alone (four creating it at once all hung).
    """
    from prefect.server.api.server import SubprocessASGIServer  # Prefect's server parts: only for a temporary server

    home = Path(get_current_settings().home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "adaptflow-temporary-server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            server = SubprocessASGIServer()  # the instance Prefect's client uses when no API URL is set
            if server.port is None:
                server.port = _kernel_port()
            server.start()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
