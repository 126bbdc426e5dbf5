"""The local Prefect server and process worker behind ``adaptflow stack up | down | status``.

``up`` starts ``prefect server start`` on a free loopback port (SQLite under
``$ADAPTFLOW_HOME/stack/prefect/home`` by default; PostgreSQL when
``PREFECT_API_DATABASE_CONNECTION_URL`` is set, which the server reads as usual) and a
``prefect worker start --type process`` on the pool ``adaptflow-local``. Flow runs inherit
the worker's environment (plus ``worker_env``), so they find S3 as the CLI does: the S3
variables, else the local S3 server of the same ADAPTFLOW_HOME; never through parameters.
Files in ``$ADAPTFLOW_HOME/stack/prefect/``::

    state.json     pids, port, API URL and the stack id (no secret)
    server.log     worker.log

A CLI run that finds no server starts this one in the background, without a worker
(infra/prefect_client.py): later runs reuse it, ``stack up`` adds the worker, ``stack down``
stops it.

Each process is started in its own session with ``ADAPTFLOW_STACK_ID=<id>`` in its
environment; ``down`` signals a process group only when its leader still carries that id,
so it stops exactly what ``up`` started (uvicorn and flow runs included), never a
process matched by name.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Callable

from adaptflow.infra.stack import _CHILDREN, HOST, PORT_RANGE, _alive, _port_free
from adaptflow.tasks.config import adaptflow_home
from adaptflow.tasks.errors import ConfigError, Problem

WORK_POOL = "adaptflow-local"
STACK_ID_VAR = "ADAPTFLOW_STACK_ID"
TERM_GRACE_S = 10.0
SERVER_VAR = "ADAPTFLOW_PREFECT_SERVER"
"""Where a CLI run reports when no server is set or running: ``background`` (default) starts this stack's
server and leaves it running for later runs; ``temporary``, Prefect's own in-process server (infra/prefect_client.py)."""


def server_mode() -> str:
    """The value of ADAPTFLOW_PREFECT_SERVER: 'background' (also when unset) or 'temporary'."""
    mode = os.environ.get(SERVER_VAR, "").strip().lower() or "background"
    if mode not in ("background", "temporary"):
        raise ConfigError(Problem(SERVER_VAR, f"is {mode!r}", "set it to 'background' (the default) or 'temporary'"))
    return mode


@dataclass(frozen=True)
class PrefectStackInfo:
    stack_id: str
    api_url: str
    port: int
    server_pid: int
    worker_pid: int | None
    work_pool: str
    prefect_home: str
    database: str
    """'sqlite' or the scheme of PREFECT_API_DATABASE_CONNECTION_URL (never the URL: it may hold a password)."""
    started_at: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


class PrefectStack:
    """Start, stop and describe the Prefect server + process worker of one ADAPTFLOW_HOME."""

    def __init__(self, home: Path | None = None):
        self.home = (Path(home) if home is not None else adaptflow_home()).expanduser().absolute()
        self.dir = self.home / "stack" / "prefect"
        self.prefect_home = self.dir / "home"
        self.state_path = self.dir / "state.json"
        self.server_log = self.dir / "server.log"
        self.worker_log = self.dir / "worker.log"

    @property
    def sqlite_database(self) -> Path:
        return self.prefect_home / "prefect.db"

    def up(
        self,
        worker_env: dict[str, str] | None = None,
        timeout: float = 120,
        worker: bool = True,
        new_database: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> PrefectStackInfo:
        """Start server and worker (or return the running ones); returns when the API answers.

        A server already running without its worker (one a run started in the background)
        gets the worker now when ``worker`` is set. Several processes calling this at once
        start one server: the first holds ``up.lock`` while it starts, the others then find it.
        ``on_start`` is called when this call is the one that starts the server.
        ``new_database`` moves an existing SQLite database aside (``prefect.db.bak-<time>``) first.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "up.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                running = self.status()
                if running is None:
                    if on_start is not None:
                        on_start()
                    running = self._start_server(timeout, new_database)
                if worker and not self.worker_running(running):
                    running = self._start_worker(running, worker_env)
                return running
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _start_server(self, timeout: float, new_database: bool) -> PrefectStackInfo:
        self.down()  # a half-dead earlier stack: stop what is left of it
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        if new_database:
            self._move_database_aside()
        port = _free_port()
        stack_id = uuid.uuid4().hex
        api_url = f"http://{HOST}:{port}/api"
        base = self._process_env(stack_id, port)
        log_offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        server = _spawn(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)], base, self.server_log, self.dir
        )
        database = (os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or "sqlite").split(":", 1)[0]
        info = PrefectStackInfo(stack_id, api_url, port, server, None, WORK_POOL, str(self.prefect_home), database, _now())
        self._write_state(info)
        try:
            where = str(self.sqlite_database) if database == "sqlite" else f"the {database} database of PREFECT_API_DATABASE_CONNECTION_URL"
            wait_healthy(api_url, timeout, lambda: _alive(server), self.server_log, where, log_offset)
        except BaseException:
            self.down()
            raise
        return info

    def _start_worker(self, info: PrefectStackInfo, worker_env: dict[str, str] | None) -> PrefectStackInfo:
        env = {**self._process_env(info.stack_id, info.port), **(worker_env or {}), "PREFECT_API_URL": info.api_url}
        pid = _spawn(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"], env, self.worker_log, self.dir
        )
        info = PrefectStackInfo(**{**asdict(info), "worker_pid": pid})
        self._write_state(info)
        return info

    def _process_env(self, stack_id: str, port: int) -> dict[str, str]:
        """The environment of the server and the worker: this stack's id and Prefect home, the UI's API address."""
        base = {
            **os.environ,
            STACK_ID_VAR: stack_id,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The UI asks the server where its API is (GET /ui-settings); without these it answers
            # 127.0.0.1:4200 whatever --port says, and the page cannot reach its own server.
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api",
        }
        base.pop("PREFECT_API_URL", None)
        return base

    def _move_database_aside(self) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for path in sorted(self.prefect_home.glob("prefect.db*")):  # the file and SQLite's -wal / -shm beside it
            path.rename(path.with_name(f"{path.name}.bak-{stamp}"))

    def down(self) -> bool:
        """Stop the worker, then the server, that ``up`` started; ``False`` when none was running. Idempotent."""
        info = self._read_state()
        if info is None:
            return False
        stopped = False
        for pid in (info.worker_pid, info.server_pid):
            if pid is not None and self._owns(pid, info.stack_id):
                _stop_group(pid)
                stopped = True
        self.state_path.unlink(missing_ok=True)
        return stopped

    def status(self) -> PrefectStackInfo | None:
        """The running stack, or ``None`` when its server is not running."""
        info = self._read_state()
        if info is None or not self._owns(info.server_pid, info.stack_id):
            return None
        return info

    def worker_running(self, info: PrefectStackInfo) -> bool:
        return info.worker_pid is not None and self._owns(info.worker_pid, info.stack_id)

    def _owns(self, pid: int, stack_id: str) -> bool:
        return started_by(pid, stack_id)

    def _read_state(self) -> PrefectStackInfo | None:
        try:
            return PrefectStackInfo(**json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                Problem(
                    str(self.state_path),
                    f"corrupt Prefect stack state ({type(exc).__name__})",
                    "stop the processes it names by hand, then delete it",
                )
            ) from None

    def _write_state(self, info: PrefectStackInfo) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.state_path.with_name(".state.json.tmp")
        partial.write_text(json.dumps(asdict(info), indent=2))
        os.replace(partial, self.state_path)


# ---- helpers ------------------------------------------------------------------------------


def wait_healthy(api_url: str, timeout: float, alive, log: Path, database: str = "the Prefect database", log_offset: int = 0) -> None:
    """Poll ``API/health`` until it answers 200; a clear error with the log's tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise database_problem(log, database, log_offset) or ConfigError(
                Problem("prefect server", f"exited during start-up; last lines of {log}:\n{_tail(log)}", "fix the cause shown in the log")
            )
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ConfigError(
        Problem(
            api_url,
            f"the Prefect server did not answer within {timeout:.0f} s; last lines of {log}:\n{_tail(log)}",
            "retry, or read the log",
        )
    )


def database_problem(log: Path, database: str, log_offset: int = 0) -> ConfigError | None:
    """The one-line error for a server that stopped because its database has a schema this Prefect does not know.

    That happens to a database last opened by another Prefect release: a newer one (its
    migrations are unknown here), or one whose migration failed half-way.
    """
    with open(log, "rb") as handle:  # only what this start wrote: the log is kept across starts
        handle.seek(log_offset)
        text = handle.read().decode(errors="replace")
    found = re.findall(r"Can't locate revision identified by '([^']+)'", text)
    if not found:
        return None
    return ConfigError(
        Problem(
            database,
            f"was written by another Prefect release: its schema revision {found[-1]!r} is unknown to prefect {version('prefect')}",
            "run the Prefect release that wrote it, or start with an empty one: `adaptflow stack up --new-prefect-database` "
            "(the old file is kept beside it as a .bak)",
        )
    )


def started_by(pid: int, stack_id: str) -> bool:
    """Whether ``pid`` is alive and carries ``ADAPTFLOW_STACK_ID=stack_id``: a process a stack's ``up`` started."""
    if not _alive(pid):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{STACK_ID_VAR}={stack_id}".encode() in environ


def _spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _stop_group(pid: int, term_grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM to the process group ``pid`` leads (it was started in its own session), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, term_grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                _CHILDREN.pop(pid, None)
                try:
                    os.killpg(pid, signal.SIGKILL)  # members left behind by the leader (flow runs, uvicorn)
                except ProcessLookupError:
                    pass
                return
            time.sleep(0.2)


def _free_port() -> int:
    for _ in range(500):
        port = random.randrange(*PORT_RANGE)
        if _port_free(port):
            return port
    raise ConfigError(Problem(f"{HOST} ports {PORT_RANGE}", "no free port for the Prefect server", "free some ports"))


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
