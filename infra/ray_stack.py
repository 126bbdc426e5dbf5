"""A local Ray head for trying the 'ray' launcher: ``adaptflow stack up --ray`` / ``stack down``.

``up`` runs ``ray start --head --block`` on a free loopback port, in its own session with
``ADAPTFLOW_STACK_ID=<id>`` in its environment, and writes where it listens to
``$ADAPTFLOW_HOME/stack/ray/head.json``; runs with ``--launcher ray`` and no address find it
there. ``down`` stops that process group only (``ray start --block`` stops the head's
raylet, GCS and workers when it ends), never Ray processes matched by name. More nodes
join it with ``ray start --address=<its address>`` (on this machine or another that reaches it).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptflow.infra.prefect_stack import STACK_ID_VAR, _free_port, _now, _spawn, _stop_group, _tail, started_by
from adaptflow.infra.stack import HOST, _alive, _port_answers
from adaptflow.tasks.config import adaptflow_home
from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.training.checks import INSTALL_FIX, LOCAL_HEAD_FILE, ray_installed

READY_LINE = "Ray runtime started"
HEAD_STOP_GRACE_S = 3.0


@dataclass(frozen=True)
class RayHeadInfo:
    """The running head (``head.json``): no secret."""

    pid: int
    address: str
    cpus: int
    stack_id: str
    log_path: str
    started_at: str


class RayStack:
    """The Ray head of one ADAPTFLOW_HOME."""

    def __init__(self, home: Path | None = None):
        self.home = home or adaptflow_home()
        self.state_path = self.home / LOCAL_HEAD_FILE
        self.dir = self.state_path.parent

    def up(self, cpus: int | None = None, timeout: float = 90) -> RayHeadInfo:
        """Start the head (or return the running one). ``cpus``: what Ray may hand out (default: this machine's)."""
        running = self.status()
        if running is not None:
            return running
        if not ray_installed():
            raise ConfigError(Problem("adaptflow stack up --ray", "Ray is not installed here", INSTALL_FIX))
        port, stack_id = _free_port(), uuid.uuid4().hex
        cpus = cpus or os.cpu_count() or 1
        ray = Path(sys.executable).with_name("ray")
        args = [str(ray), "start", "--head", "--block", f"--port={port}", f"--node-ip-address={HOST}", f"--num-cpus={cpus}"]
        args += ["--include-dashboard=false", "--disable-usage-stats"]
        log = self.dir / "head.log"
        offset = log.stat().st_size if log.exists() else 0
        pid = _spawn(args, {**os.environ, STACK_ID_VAR: stack_id}, log, self.dir)
        info = RayHeadInfo(pid, f"{HOST}:{port}", cpus, stack_id, str(log), _now())
        deadline = time.monotonic() + timeout
        while not (READY_LINE in log.read_text(errors="replace")[offset:] and _port_answers(port)):
            if not _alive(pid) or time.monotonic() > deadline:
                _stop_group(pid)
                raise ConfigError(
                    Problem(
                        "adaptflow stack up --ray",
                        f"the Ray head did not start; last lines of {log}:\n{_tail(log)}",
                        "fix what it says, then run it again",
                    )
                )
            time.sleep(0.5)
        partial = self.state_path.with_name(".head.json.tmp")
        partial.write_text(json.dumps(asdict(info), indent=2))
        os.replace(partial, self.state_path)
        return info

    def down(self) -> bool:
        """Stop the head ``up`` started; ``False`` when none was running."""
        info = self._read()
        if info is None:
            return False
        stopped = self._owns(info)
        if stopped:
            # `ray start --block` takes some 20 s to stop its processes one by one on SIGTERM; a local
            # head keeps nothing worth that wait (checkpoints are on S3), so the group is killed after 3 s
            _stop_group(info.pid, term_grace_s=HEAD_STOP_GRACE_S)
        self.state_path.unlink(missing_ok=True)
        return stopped

    def status(self) -> RayHeadInfo | None:
        info = self._read()
        return info if info is not None and self._owns(info) else None

    def _read(self) -> RayHeadInfo | None:
        try:
            return RayHeadInfo(**json.loads(self.state_path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    @staticmethod
    def _owns(info: RayHeadInfo) -> bool:
        return started_by(info.pid, info.stack_id)
