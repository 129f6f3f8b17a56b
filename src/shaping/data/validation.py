"""The validate stage's checks: every row of every source file, with file and line number."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shaping.data.messages import validate_messages


@dataclass
class RowError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class ValidationResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # valid rows: {"id", "messages"}
    errors: list[RowError] = field(default_factory=list)
    lines_read: int = 0


def check_file(path: Path) -> ValidationResult:
    """Read a samples JSONL file and check each row; malformed lines are errors, not tracebacks."""
    result = ValidationResult()
    name = path.as_posix()
    if not path.is_file():
        result.errors.append(RowError(name, 0, "file", "not found (did its synthesize stage run?)"))
        return result
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        result.errors.append(RowError(name, 1, "encoding", "starts with a UTF-8 byte-order mark; remove it"))
        data = data[3:]
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        if lineno == len(lines) and raw == b"":
            break  # the newline ending the last line
        result.lines_read += 1
        if raw.endswith(b"\r"):
            result.errors.append(RowError(name, lineno, "encoding", "CRLF line ending; use \\n"))
            raw = raw[:-1]
        if not raw.strip():
            result.errors.append(RowError(name, lineno, "line", "blank line"))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            result.errors.append(RowError(name, lineno, "encoding", f"not valid UTF-8 at byte {err.start}"))
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            truncated = lineno == len(lines) and not data.endswith(b"\n")
            hint = " (the last line looks truncated)" if truncated else ""
            result.errors.append(RowError(name, lineno, "json", f"malformed JSON: {err.msg}{hint}"))
            continue
        if not isinstance(row, dict):
            result.errors.append(
                RowError(name, lineno, "row", f"expected an object, got {type(row).__name__}")
            )
            continue
        row_errors = check_row(row)
        result.errors.extend(RowError(name, lineno, f, m) for f, m in row_errors)
        if not row_errors:
            result.rows.append({"id": row["id"], "messages": row["messages"]})
    return result


def check_row(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each problem in one sample row."""
    problems: list[tuple[str, str]] = []
    if "__ERROR__" in row:
        return [("__ERROR__", "an error record in a samples file")]
    rid = row.get("id")
    if not isinstance(rid, str) or not rid.strip():
        problems.append(("id", "required, a non-empty string"))
    for message in validate_messages(row.get("messages")):
        field_name, _, text = message.partition(": ")
        problems.append((field_name, text))
    return problems


def find_duplicate_ids(rows: list[dict[str, Any]]) -> list[str]:
    seen: set[str] = set()
    dupes: list[str] = []
    for row in rows:
        if row["id"] in seen:
            dupes.append(row["id"])
        seen.add(row["id"])
    return dupes


def split_rows(
    rows: list[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded shuffle, then (train, eval); eval holds at least one row when there are two or more."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"dataset.eval_fraction={eval_fraction}: must be between 0 and 1")
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * eval_fraction)) if len(shuffled) > 1 else 0
    return shuffled[n_eval:], shuffled[:n_eval]
