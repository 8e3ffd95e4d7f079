"""Checkpoints that ride out object-store outages: written on the rank's own disk first, uploaded in
the background with retries, handed to Ray Train once they are complete in the store.

Why not Ray Train's own upload: in its synchronous mode every rank waits on the store at each
checkpoint, and in its asynchronous mode an upload that fails three quick tries fails the workers,
so a store that is down for a minute costs every step since the last checkpoint (a 90 s SeaweedFS
outage failed a run at its first checkpoint). Here training never waits on the store:

- :meth:`CheckpointUploads.save` writes ``checkpoint_<step>`` under the run's local folder (complete
  once renamed from its ``.partial`` name) and keeps the newest ``keep_local`` there;
- one upload runs at a time, in a background thread, retried with backoff for up to ``retry_s``; a
  checkpoint saved meanwhile waits, and only the newest waiting one goes next;
- a finished upload is handed to Ray Train at the next report (the files are already in the run's
  folder, so Ray only records it: its ``num_to_keep`` and a resumed run see it as their own);
- when uploads have failed for ``retry_s``, :attr:`CheckpointUploads.failed` says so and names the
  newest local checkpoint; the training loop then stops (a retry would meet the same store);
- :meth:`CheckpointUploads.newest_local` is what a resumed rank 0 compares with the store's newest.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srcore.errors import CheckpointUploadFailed, DataError, SrcoreError
from srcore.storage import copy_file, file_exists, join

log = logging.getLogger(__name__)

__all__ = ["CheckpointUploads", "CheckpointUploadFailed", "Uploaded", "local_run_folder"]

_NAME = re.compile(r"^checkpoint_(\d+)$")
# state.json last: a checkpoint folder in the store whose state.json exists holds all three files
_ORDER = {"model.pth": 0, "state.pt": 1, "state.json": 2}


@dataclass
class Uploaded:
    """A checkpoint now complete in the store, with the metrics of the step it holds."""

    name: str
    metrics: dict[str, Any]


def local_run_folder(cache: Path, run_dir: str, name: str) -> Path:
    """This machine's folder for a run's local checkpoints and logs: one per run location."""
    return cache / "runs" / f"{name}-{hashlib.sha256(run_dir.encode()).hexdigest()[:10]}"


class CheckpointUploads:
    """Rank 0's checkpoints of one run: local copies and their uploads (see the module docstring)."""

    def __init__(self, run_dir: str, local: Path, retry_s: float, keep_local: int = 2,
                 max_delay_s: float = 30.0, on_warning: Callable[[str], None] | None = None) -> None:
        self.run_dir, self.local, self.retry_s = run_dir, local, retry_s
        self.on_warning = on_warning  # where the user sees it (the driver's console), beside this log
        self.keep_local, self.max_delay_s = max(1, keep_local), max_delay_s
        self.failed: str | None = None  # why uploads gave up
        self._lock = threading.Condition()
        self._waiting: tuple[Path, dict[str, Any]] | None = None
        self._current: Path | None = None  # the folder being uploaded
        self._busy = False
        self._done: list[Uploaded] = []

    # -- local copies ---------------------------------------------------------------------------

    def save(self, write: Callable[[Path], None], step: int) -> Path:
        """``write(folder)`` into a fresh folder for ``step``; returns it once it is complete."""
        final = self.local / f"checkpoint_{step:08d}"
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write(partial)
        with self._lock:  # a second save of one step (a validation, then a stop) replaces the first
            if final != self._current:
                shutil.rmtree(final, ignore_errors=True)
                partial.rename(final)
            else:  # the same step is being uploaded already
                shutil.rmtree(partial, ignore_errors=True)
        self._prune()
        return final

    def local_checkpoints(self) -> list[Path]:
        """Complete local checkpoints, oldest first."""
        if not self.local.is_dir():
            return []
        return sorted(p for p in self.local.iterdir() if p.is_dir() and _NAME.match(p.name))

    def newest_local(self) -> Path | None:
        found = self.local_checkpoints()
        return found[-1] if found else None

    def _prune(self) -> None:
        with self._lock:
            busy = {self._current, self._waiting[0] if self._waiting else None}
        for old in self.local_checkpoints()[:-self.keep_local]:
            if old not in busy:
                shutil.rmtree(old, ignore_errors=True)

    def where(self) -> str:
        """The newest local checkpoint, named so a user can find it (host and path)."""
        newest = self.newest_local()
        return f"{socket.gethostname()}:{newest}" if newest else f"{socket.gethostname()}:{self.local}"

    # -- uploads --------------------------------------------------------------------------------

    def submit(self, folder: Path, metrics: dict[str, Any]) -> None:
        """Upload ``folder`` after the one in flight (a newer submission replaces one still waiting)."""
        with self._lock:
            if self.failed:
                return
            self._waiting = (folder, metrics)
            if not self._busy:
                self._busy = True
                threading.Thread(target=self._work, name="srcore-checkpoint-upload", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._waiting is None:
                    self._busy, self._current = False, None
                    self._lock.notify_all()
                    return
                (folder, metrics), self._waiting = self._waiting, None
                self._current = folder
            try:
                self._upload(folder)
            except (OSError, SrcoreError) as exc:
                with self._lock:
                    self.failed = (f"checkpoints could not be uploaded to {self.run_dir} for "
                                   f"{self.retry_s:.0f} s ({str(exc).splitlines()[0][:300]})")
                    self._waiting, self._busy, self._current = None, False, None
                    self._lock.notify_all()
                return
            with self._lock:
                self._done.append(Uploaded(folder.name, metrics))

    def _upload(self, folder: Path) -> None:
        deadline = time.monotonic() + self.retry_s
        delay, failing_since = 1.0, None
        files = sorted(folder.iterdir(), key=lambda f: (_ORDER.get(f.name, -1), f.name))
        target = join(self.run_dir, folder.name)
        while True:
            try:
                for f in files:
                    copy_file(f, join(target, f.name))
            except DataError:  # refused (no bucket, no access): waiting will not help
                raise
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if failing_since is None:
                    failing_since = time.monotonic()
                    self._warn(f"checkpoint {folder.name} could not be uploaded to {self.run_dir} "
                               f"({str(exc).splitlines()[0][:200]}); training goes on, the upload is retried "
                               f"for up to {self.retry_s:.0f} s")
                time.sleep(delay)
                delay = min(2 * delay, self.max_delay_s)
                continue
            if failing_since is not None:
                self._warn(f"checkpoint {folder.name} uploaded to {self.run_dir} after "
                           f"{time.monotonic() - failing_since:.0f} s of retries")
            return

    def _warn(self, text: str) -> None:
        log.warning("%s", text)
        if self.on_warning is not None:
            self.on_warning(text)

    def take_uploaded(self) -> Uploaded | None:
        """The newest upload finished since the last call (older finished ones are superseded), if the
        store answers now: handing it to Ray Train makes Ray write its own records to the store, which
        would fail the run if the store had gone away since the upload; then it waits for a later call."""
        done = self._newest_done()
        if done is None or not self._answers(done):
            return None
        with self._lock:
            self._done = self._done[self._done.index(done) + 1:]
        return done

    def has_uploaded(self) -> bool:
        """A finished upload waits to be handed to Ray Train."""
        with self._lock:
            return bool(self._done)

    def ready_to_hand_over(self) -> bool:
        """No finished upload waits, or the newest can be handed over now (the store answers)."""
        done = self._newest_done()
        return done is None or self._answers(done)

    def _newest_done(self) -> Uploaded | None:
        with self._lock:
            return self._done[-1] if self._done else None

    def _answers(self, done: Uploaded) -> bool:
        try:
            return file_exists(join(join(self.run_dir, done.name), "state.json"))
        except OSError:
            return False

    def wait(self, timeout: float) -> bool:
        """Wait until no upload is in flight or waiting; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def discard_local(self) -> None:
        """The run is complete in the store: its local copies are no longer needed."""
        shutil.rmtree(self.local, ignore_errors=True)
