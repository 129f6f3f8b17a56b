"""The resume journal: each finished record appended as it finishes, so a run killed halfway
(SIGKILL, Ctrl-C, a crash) resumes without recomputing it.

One JSONL file per pipeline and run fingerprint (the pipeline's code, the models and the
input files: see `Pipeline.fingerprint`), beside the response cache, because DVC deletes a
stage's outputs before it runs the stage again. Lines are written in batches, one `write` system
call per turn of the engine's event loop (they survive a SIGKILL; `sync()`, every
second or so, makes them survive a power cut too). A finished run deletes its journal.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, path: Path, resume: bool = True) -> None:
        self.path = path
        self.finished: dict[str, dict[str, Any]] = {}  # record key -> its sample row
        if resume and path.is_file():
            self.finished = self._read(path)
        elif path.is_file():
            path.unlink()  # --no-cache: start over
        self._lines: list[bytes] = []
        self._handle: IO[bytes] | None = None

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        finished: dict[str, dict[str, Any]] = {}
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    entry = orjson.loads(line)
                    finished[entry["key"]] = entry["sample"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    # only a last line cut short by a full disk can be half-written: the record runs again
                    log.warning("%s:%d: unreadable journal line skipped (that record runs again)", path, number)
        return finished

    def append(self, key: str, task: str, index: int, sample: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps({"key": key, "task": task, "index": index, "sample": sample}) + b"\n")

    def flush(self) -> None:
        if not self._lines:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a buffered file splits a write larger than its buffer into several system calls,
            # and a SIGKILL between two of them left a line cut short (a kill mid-call cannot)
            self._handle = self.path.open("ab", buffering=0)
        data = memoryview(b"".join(self._lines))
        while data:
            data = data[self._handle.write(data) :]
        self._lines.clear()

    def sync(self) -> None:
        if self._handle is not None:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
