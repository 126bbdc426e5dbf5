"""Mirror a run's checkpoints to S3, so that a retry on another machine resumes from them.

The training worker saves checkpoints to ``RUN_DIR/checkpoints/step-NNNNNNN/`` (its
``loop_state.json`` written last marks it complete). The train task uploads each new one
under ``checkpoint_uri/step-NNNNNNN/``, again with ``loop_state.json`` last, and keeps the
newest two. Before a (re)start, when the run folder has no complete checkpoint but the
mirror does, the newest complete one is downloaded first.
"""

from __future__ import annotations

import re
from pathlib import Path

from adaptflow.tasks.storage.s3 import S3Settings, download_prefix, iter_objects, make_client, parse_s3_uri, storage_errors, upload_file
from adaptflow.tasks.training.engine import CHECKPOINTS, LOOP_STATE, latest_checkpoint

_STEP = re.compile(r"(step-\d{7})/")


class CheckpointMirror:
    """Checkpoints of one run under an ``s3://`` prefix."""

    def __init__(self, settings: S3Settings, uri: str, keep: int = 2):
        self.settings = settings
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = parse_s3_uri(self.uri)
        self.keep = keep
        self.client = make_client(settings)

    def _steps(self, complete_only: bool = True) -> list[str]:
        """Mirrored checkpoint folder names, oldest first (only those with their loop state, by default)."""
        names: dict[str, bool] = {}
        for obj in iter_objects(self.settings, self.bucket, self.prefix + "/", self.client):
            match = _STEP.match(obj["Key"][len(self.prefix) + 1 :])
            if match:
                names[match.group(1)] = names.get(match.group(1), False) or obj["Key"].endswith("/" + LOOP_STATE)
        return sorted(n for n, complete in names.items() if complete or not complete_only)

    def upload(self, checkpoint: Path) -> str | None:
        """Upload one complete local checkpoint; its loop state goes last. Returns its URI.

        The worker keeps writing while this uploads, and rotates its own old checkpoints
        away. A checkpoint that disappears before or during its upload has been superseded
        by a newer one (which gets its own upload): its partial copy is removed and None
        is returned. The newest checkpoint of a run is never rotated, so it always arrives.
        """
        target = f"{self.uri}/{checkpoint.name}"
        try:
            if not (checkpoint / LOOP_STATE).is_file():
                return None
            files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != LOOP_STATE)
            for path in files + [checkpoint / LOOP_STATE]:
                upload_file(self.settings, path, f"{target}/{path.relative_to(checkpoint).as_posix()}", self.client)
        except FileNotFoundError:
            self._delete(checkpoint.name)
            return None
        self._prune()
        return target

    def _delete(self, name: str) -> None:
        keys = [o["Key"] for o in iter_objects(self.settings, self.bucket, f"{self.prefix}/{name}/", self.client)]
        with storage_errors("delete old checkpoint", f"{self.uri}/{name}", self.settings.endpoint_url):
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})

    def _prune(self) -> None:
        for name in self._steps(complete_only=False)[: -self.keep]:
            self._delete(name)

    def restore_into(self, run_dir: Path) -> Path | None:
        """Download the newest mirrored checkpoint when the run folder has none; returns its local path."""
        if latest_checkpoint(run_dir) is not None:
            return None
        steps = self._steps()
        if not steps:
            return None
        local = run_dir / CHECKPOINTS / steps[-1]
        download_prefix(self.settings, f"{self.uri}/{steps[-1]}", local, self.client)
        return local
