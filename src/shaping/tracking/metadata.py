"""The JSON record every stage writes next to its outputs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shaping.io import write_json

TRACKED_LIBRARIES = (
    "shaping",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "dvc",
    "dvclive",
    "hydra-core",
    "omegaconf",
)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_inputs(paths: Iterable[str | Path]) -> dict[str, str]:
    """SHA-256 of every file under each path (a file or a folder), keyed by path."""
    hashes: dict[str, str] = {}
    for entry in paths:
        entry = Path(entry)
        files = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for file in files:
            if file.is_file():
                hashes[file.as_posix()] = sha256_file(file)
    return hashes


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD's commit, or None outside a git checkout (or before the first commit)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """Filled in as a stage runs; `finish()` writes it."""

    stage: str
    params_fingerprint: str
    params_sections: list[str]
    backend: str | None = None
    git_commit: str | None = field(default_factory=git_commit)
    inputs: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=library_versions)
    started_at: str = field(default_factory=_now)
    ended_at: str | None = None
    duration_s: float | None = None
    exit_status: str = "running"
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def add_inputs(self, paths: Iterable[str | Path]) -> None:
        self.inputs.update(hash_inputs(paths))

    def finish(self, path: str | Path, exit_status: str, error: str | None = None) -> None:
        self.ended_at = _now()
        self.duration_s = round(time.perf_counter() - self._t0, 3)
        self.exit_status = exit_status
        self.error = error
        record = asdict(self)
        record.pop("_t0")
        write_json(path, record)
