"""The journal of ``srcore data prepare``: ``<out>/.journal/*.jsonl``, run state beside the shards.

Each finished shard group is one line: its manifest entries, its rejected images, and for each of
its images the key (size + modification time) and the sha256 the worker computed while reading
it. Lines go out in segments, at most one every ``every`` seconds (and one when the run stops),
each segment written once: the driver's work stays linear in the number of shards, and a killed
driver loses at most the last ``every`` seconds of finished shards (they are built again).

A rerun reads every segment. Shard entries found there are candidates like the manifest's (kept
only if fingerprint and file sha256 still match), so an interrupted run resumes from its finished
shards; input hashes found there under an unchanged key spare reading that input again. When a run
ends well the segments are folded into one that keeps only the input hashes.

The journal depends on file times and on when shards finished, so it is no output: the manifest
does not list it and DVC ignores it (``.dvcignore``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

from srcore.storage import StoreUnavailable, is_s3, open_store

log = logging.getLogger(__name__)

__all__ = ["JOURNAL", "Journal", "Recorded"]

JOURNAL = ".journal"


@dataclass
class Recorded:
    """What earlier runs' segments hold, in the order they were written."""

    groups: list[dict] = field(default_factory=list)  # {"shard", "entries", "bad"} per finished group
    # (input, file name) -> (key, sha256)
    hashes: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def digest(self, location: str, name: str, key: str) -> str | None:
        """The sha256 recorded for this input file, if recorded under the same ``key``."""
        recorded_key, digest = self.hashes.get((location, name), (None, None))
        return digest if recorded_key == key else None


class Journal:
    def __init__(self, out: str, every: float = 10.0) -> None:
        location = f"{out.rstrip('/')}/{JOURNAL}" if is_s3(out) else os.path.join(out, JOURNAL)
        self.store = open_store(location)
        self.every = every
        self._pending: list[str] = []
        self._last = float("-inf")  # the first finished group is written at once
        self._seq = 0
        self._segments: list[str] = []  # every segment this run has seen or written

    def load(self) -> Recorded:
        """Read every segment (a torn or unreadable one is skipped: it only saves work)."""
        for tmp in self.store.temporaries():
            tmp.unlink(missing_ok=True)
        seen = Recorded()
        if not self.store.is_folder():
            return seen
        for name in self.store.files():
            self._segments.append(name)
            try:
                lines = self.store.read_bytes(name).decode().splitlines()
            except StoreUnavailable:
                raise
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                for location, name_, key, digest in record.get("inputs", []):
                    seen.hashes[(location, name_)] = (key, digest)
                if "shard" in record:
                    seen.groups.append(record)
        return seen

    def add(self, record: dict) -> None:
        """Record a finished group; written with the next segment."""
        self._pending.append(json.dumps(record, sort_keys=True))
        if time.monotonic() - self._last >= self.every:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._write(self._pending)
            self._pending = []
        self._last = time.monotonic()

    def settle(self, hashes: list[tuple[str, str, str, str]]) -> None:
        """After a run that ended well: one segment with the inputs' (input, name, key, sha256),
        and no other."""
        self._pending = []
        old = list(self._segments)
        kept = self._write([json.dumps({"inputs": hashes})])
        for name in old:
            if name != kept:
                self.store.delete(name)
        self._segments = [kept]

    def _write(self, lines: list[str]) -> str:
        # names sort in the order written, across runs
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
        self.store.write_bytes(name, ("\n".join(lines) + "\n").encode())
        self._segments.append(name)
        return name
