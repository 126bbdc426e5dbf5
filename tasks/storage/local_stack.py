"""The files through which the local S3 stack (``adaptflow stack up``) says how to reach it.

``infra/stack.py`` starts the server and writes these files; :mod:`adaptflow.tasks.storage.settings`
reads them when nothing else configures S3. Both go through this module, so the layout
and format below are written down once::

    $ADAPTFLOW_HOME/stack/
        credentials.json   {"access_key_id", "secret_access_key"}, generated once (mode 0600)
        state.json         :class:`StackInfo` of the running server: pid, ports, endpoint (no secret)
        identities.json    the server's ``-s3.config`` (mode 0600)
        ports.json         the ports used last time
        weed.log           the server's output
        s3-data/           the objects

The stack counts as running while ``state.json`` names a live process whose command line
holds this stack's ``-dir=.../s3-data``: never a process matched by name. Every file is
written atomically (temp file + rename) and readable by the owner only.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptflow.tasks.errors import Problem, StorageError

STACK_DIR = "stack"

CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Processes started by this Python process, kept so that they are reaped (no zombie left
looking alive) and Popen does not warn about a running child at exit."""


def default_home() -> Path:
    """``$ADAPTFLOW_HOME``, by default ``~/.adaptflow`` (storage sits below the config module)."""
    return Path(os.environ.get("ADAPTFLOW_HOME", "~/.adaptflow")).expanduser()


@dataclass(frozen=True)
class StackInfo:
    """What a client needs to know about the running server (no secret here): ``state.json``."""

    pid: int
    endpoint_url: str
    ports: dict[str, int]
    data_dir: str
    log_path: str
    bucket: str
    started_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackInfo:
        raw = json.loads(text)
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


class StackFiles:
    """The ``stack/`` folder of one ADAPTFLOW_HOME: where each file is, reading and writing them."""

    def __init__(self, home: Path | None = None):
        # absolute: the server runs in self.dir, and its -dir=... is matched against self.data_dir
        self.home = (Path(home) if home is not None else default_home()).expanduser().absolute()
        self.dir = self.home / STACK_DIR
        self.data_dir = self.dir / "s3-data"
        self.log_path = self.dir / "weed.log"
        self.state_path = self.dir / "state.json"
        self.credentials_path = self.dir / "credentials.json"
        self.identities_path = self.dir / "identities.json"
        self.ports_path = self.dir / "ports.json"

    def running(self) -> StackInfo | None:
        """The running server's info, or ``None`` when it is not running."""
        info = self.read_state()
        if info is None or not self.owns(info.pid):
            return None
        return info

    def read_state(self) -> StackInfo | None:
        """``state.json`` as written at start-up (its process may be gone); None when absent."""
        try:
            return StackInfo.from_json(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                Problem(
                    str(self.state_path),
                    f"corrupt stack state ({type(exc).__name__})",
                    "stop any `weed server` you started by hand, then delete this file",
                )
            ) from None

    def load_credentials(self) -> dict[str, str]:
        """The stack's access key id and secret key."""
        try:
            credentials = json.loads(self.credentials_path.read_text())
            return {key: str(credentials[key]) for key in ("access_key_id", "secret_access_key")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                Problem(
                    str(self.credentials_path),
                    f"unreadable stack credentials ({type(exc).__name__})",
                    "stop the stack, delete this file and run `adaptflow stack up` to generate new keys",
                )
            ) from None

    def write_state(self, info: StackInfo) -> None:
        self.write_private(self.state_path, info.to_json())

    def write_credentials(self, credentials: dict[str, str]) -> None:
        self.write_private(self.credentials_path, json.dumps(credentials, indent=2))

    def write_private(self, path: Path, text: str) -> None:
        """Write ``text`` atomically to a file only the owner can read."""
        self.make_dir()
        partial = path.with_name(f".{path.name}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(partial, path)

    def make_dir(self) -> None:
        """The ``stack/`` folder, readable by the owner only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is alive and is this stack's server (its command line names our data dir)."""
        return alive(pid) and f"-dir={self.data_dir}" in cmdline(pid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count; our own dead children are reaped)."""
    child = CHILDREN.get(pid)
    if child is not None:  # our own child: poll() both answers and reaps
        if child.poll() is None:
            return True
        del CHILDREN[pid]
        return False
    # Someone else's child: alive while any of its threads is. A multi-threaded (Go)
    # process's main thread can be a zombie while other threads still hold its ports.
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(_thread_running(thread / "stat") for thread in threads)


def _thread_running(stat_path: Path) -> bool:
    try:
        stat = stat_path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
