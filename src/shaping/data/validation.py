"""The validate stage's gate: stream every source file once, check every row, measure quality.

Pass 1 (`Gate.scan`) reads each JSONL file line by line with orjson, so a file larger than
memory is fine: it keeps only line numbers of valid rows and the small figures quality
checks need. Pass 2 (`write_split`) reads the files again and writes the valid rows of the
seeded train/eval split. Every problem is a RowError naming file, line and field.
"""

from __future__ import annotations

import itertools
import random
import re
import statistics
import string
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from shaping.config.schema import DatasetConfig, QualityConfig
from shaping.data.messages import validate_messages
from shaping.data.schema import compile_schema
from shaping.data.think_tags import validate_think_tags

BOM = b"\xef\xbb\xbf"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NORMALISE = str.maketrans("", "", string.punctuation + string.whitespace)  # near-duplicate key


@dataclass
class RowError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class SourceStats:
    lines: int = 0
    valid: int = 0
    upstream_errors: int = 0


@dataclass
class Quality:
    """Running figures for the quality checks, O(1) memory per row (one hash, one length)."""

    cfg: QualityConfig
    rows: int = 0
    exact: set[int] = field(default_factory=set)
    duplicates: int = 0
    near: set[int] = field(default_factory=set)
    near_duplicates: int = 0
    error_like: int = 0
    lengths: list[int] = field(default_factory=list)
    unigrams: set[str] = field(default_factory=set)
    bigrams: set[tuple[str, str]] = field(default_factory=set)
    unigram_total: int = 0
    bigram_total: int = 0

    def __post_init__(self) -> None:
        # one regex each: an alternation would defeat the fast paths for anchored and literal patterns
        self._error_like = [re.compile(p, re.IGNORECASE) for p in self.cfg.error_patterns]

    def add(self, whole: Any, reply: str) -> None:
        """`whole`: a hashable form of the row's training content; `reply`: the text to judge."""
        self.rows += 1
        key = hash(whole)
        if key in self.exact:
            self.duplicates += 1
        self.exact.add(key)
        near_key = hash(reply.lower().translate(_NORMALISE))
        if near_key in self.near:
            self.near_duplicates += 1
        self.near.add(near_key)
        self.lengths.append(len(reply))
        head = reply[:300]
        if any(pattern.search(head) for pattern in self._error_like):
            self.error_like += 1
        if self.rows <= self.cfg.distinct_sample:
            words = reply.lower().translate(_PUNCTUATION).split()
            self.unigrams.update(words)
            self.bigrams.update(itertools.pairwise(words))
            self.unigram_total += len(words)
            self.bigram_total += max(0, len(words) - 1)

    def checks(self, upstream_share: float) -> dict[str, dict[str, Any]]:
        q, n = self.cfg, max(1, self.rows)
        median = statistics.median(self.lengths) if self.lengths else 0
        distinct_2 = len(self.bigrams) / self.bigram_total if self.bigram_total else 0.0

        def at_most(value: float, bound: float | None) -> dict[str, Any]:
            return {"value": round(value, 4), "max": bound, "passed": bound is None or value <= bound}

        def at_least(value: float, bound: float | None) -> dict[str, Any]:
            return {"value": round(value, 4), "min": bound, "passed": bound is None or value >= bound}

        median_check = at_least(median, q.min_median_chars)
        if q.max_median_chars is not None:
            median_check = {
                **median_check,
                "max": q.max_median_chars,
                "passed": median_check["passed"] and median <= q.max_median_chars,
            }
        return {
            "min_samples": at_least(self.rows, q.min_samples),
            "error_like_share": at_most(self.error_like / n, q.max_error_like_share),
            "duplicate_share": at_most(self.duplicates / n, q.max_duplicate_share),
            "near_duplicate_share": at_most(self.near_duplicates / n, q.max_near_duplicate_share),
            "distinct_2": at_least(distinct_2, q.min_distinct_2),
            "median_reply_chars": median_check,
            "upstream_error_share": at_most(upstream_share, q.max_upstream_error_share),
        }

    def length_stats(self) -> dict[str, float]:
        if not self.lengths:
            return {}
        ordered = sorted(self.lengths)

        def pct(p: float) -> float:
            return float(ordered[min(len(ordered) - 1, int(p * len(ordered)))])

        return {
            "mean": round(sum(ordered) / len(ordered), 1),
            "p5": pct(0.05),
            "p50": pct(0.5),
            "p95": pct(0.95),
            "max": float(ordered[-1]),
            "distinct_1": round(len(self.unigrams) / self.unigram_total, 4) if self.unigram_total else 0.0,
        }


def iter_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw bytes without the newline, had a newline) for every line."""
    for lineno, raw in enumerate(handle, start=1):
        if raw.endswith(b"\n"):
            yield lineno, raw[:-1], True
        else:
            yield lineno, raw, False


def iter_rows(path: Path, lines: Container[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for the given lines of `path` (lines pass 1 found valid), BOM and CR removed."""
    with path.open("rb") as handle:
        for lineno, raw, _ in iter_lines(handle):
            if lineno in lines:
                yield lineno, orjson.loads(raw.removeprefix(BOM).rstrip(b"\r"))


class Gate:
    """Checks rows of one dataset format against the schema, structure and think-tag rules."""

    def __init__(self, dataset: DatasetConfig, quality: QualityConfig) -> None:
        if dataset.format not in ("chat", "preference"):
            raise ValueError(f"dataset.format={dataset.format!r}: choose chat or preference")
        self.dataset = dataset
        self.schema = compile_schema(dataset.schema)
        self.quality = Quality(quality)
        self.errors: list[RowError] = []
        self.sources: dict[str, SourceStats] = {}
        self.valid: dict[str, list[int]] = {}
        self._row_check: Callable[[dict[str, Any]], tuple[list[tuple[str, str]], Any, str]] = (
            self._check_chat if dataset.format == "chat" else self._check_preference
        )

    # one row ---------------------------------------------------------------------------------
    def _check_chat(self, row: dict[str, Any]) -> tuple[list[tuple[str, str]], Any, str]:
        problems: list[tuple[str, str]] = []
        messages = row.get("messages")
        for message in validate_messages(messages):
            where, _, text = message.partition(": ")
            problems.append((where, text))
        if problems or not isinstance(messages, list):
            return problems, None, ""
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                ok, error = validate_think_tags(m["content"])
                if not ok:
                    problems.append((f"messages[{i}].content", f"think tags: {error}"))
        whole = tuple((m["role"], m["content"]) for m in messages)
        return problems, whole, messages[-1]["content"]

    def _check_preference(self, row: dict[str, Any]) -> tuple[list[tuple[str, str]], Any, str]:
        problems: list[tuple[str, str]] = []
        texts: dict[str, str] = {}
        for key in ("prompt", "chosen", "rejected"):
            value = row.get(key)
            if isinstance(value, list):  # conversational: a list of messages
                value = "\n".join(str(m.get("content", "")) if isinstance(m, dict) else "" for m in value)
            if not isinstance(value, str) or not value.strip():
                problems.append((key, "required, non-empty (a string or a list of messages)"))
            else:
                texts[key] = value
        if not problems and texts["chosen"].strip() == texts["rejected"].strip():
            problems.append(("rejected", "identical to chosen: the pair teaches nothing"))
        for key in ("chosen", "rejected"):
            if key in texts:
                ok, error = validate_think_tags(texts[key])
                if not ok:
                    problems.append((key, f"think tags: {error}"))
        whole = (texts.get("prompt"), texts.get("chosen"), texts.get("rejected"))
        return problems, whole, texts.get("chosen", "")

    # one file --------------------------------------------------------------------------------
    def scan(self, path: Path, upstream_errors: int = 0) -> None:
        name = path.as_posix()
        stats = self.sources.setdefault(name, SourceStats(upstream_errors=upstream_errors))
        valid = self.valid.setdefault(name, [])
        if not path.is_file():
            self.errors.append(RowError(name, 0, "file", "not found (did its synthesize stage run?)"))
            return
        errors, schema, row_check, quality = self.errors, self.schema, self._row_check, self.quality
        with path.open("rb") as handle:
            for lineno, raw, had_newline in iter_lines(handle):
                stats.lines += 1
                if lineno == 1 and raw.startswith(BOM):
                    errors.append(RowError(name, 1, "encoding", "starts with a UTF-8 byte-order mark; remove it"))
                    raw = raw[3:]
                if raw.endswith(b"\r"):
                    errors.append(RowError(name, lineno, "encoding", "CRLF line ending; use \\n"))
                    raw = raw[:-1]
                if not raw.strip():
                    errors.append(RowError(name, lineno, "line", "blank line"))
                    continue
                try:
                    row = orjson.loads(raw)
                except orjson.JSONDecodeError as err:
                    errors.append(RowError(name, lineno, *_json_problem(raw, err, had_newline)))
                    continue
                if not isinstance(row, dict):
                    errors.append(RowError(name, lineno, "row", f"expected an object, got {type(row).__name__}"))
                    continue
                problems = schema(row)
                found, whole, reply = row_check(row)
                seen = {where for where, _ in problems}
                problems.extend(p for p in found if p[0] not in seen)  # one message per field
                if problems:
                    errors.extend(RowError(name, lineno, where, text) for where, text in problems)
                    continue
                stats.valid += 1
                valid.append(lineno)
                quality.add(whole, reply)

    @property
    def valid_rows(self) -> int:
        return sum(len(lines) for lines in self.valid.values())

    def upstream_share(self) -> float:
        produced = sum(s.lines + s.upstream_errors for s in self.sources.values())
        failed = sum(s.upstream_errors for s in self.sources.values())
        return failed / produced if produced else 0.0


def _json_problem(raw: bytes, err: orjson.JSONDecodeError, had_newline: bool) -> tuple[str, str]:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return "encoding", f"not valid UTF-8 at byte {bad.start}"
    hint = "" if had_newline else " (the last line looks truncated)"
    return "json", f"malformed JSON: {str(err).split(':')[0]}{hint}"


def choose_split(
    valid: dict[str, list[int]], eval_fraction: float, seed: int, max_examples: int | None = None
) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """Seeded shuffle of all valid (file, line) pairs: (train, eval); eval has at least one row."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"dataset.eval_fraction={eval_fraction}: must be between 0 and 1")
    keys = [(name, line) for name in sorted(valid) for line in valid[name]]
    random.Random(seed).shuffle(keys)
    n_eval = max(1, round(len(keys) * eval_fraction)) if len(keys) > 1 else 0
    train = keys[n_eval:]
    if max_examples is not None:
        train = train[:max_examples]
    return set(train), set(keys[:n_eval])


def write_split(
    files: list[Path],
    train: set[tuple[str, int]],
    held_out: set[tuple[str, int]],
    fields: tuple[str, ...],
    train_out: BinaryIO,
    eval_out: BinaryIO,
) -> tuple[int, int]:
    """Pass 2: copy the chosen rows (only `fields`) to the two outputs, in source order."""
    counts = [0, 0]
    for path in files:
        name = path.as_posix()
        chosen = {line for file, line in train | held_out if file == name}
        if not chosen:
            continue
        for lineno, row in iter_rows(path, chosen):
            target = 0 if (name, lineno) in train else 1
            (train_out if target == 0 else eval_out).write(
                orjson.dumps({k: row[k] for k in fields if k in row}) + b"\n"
            )
            counts[target] += 1
    return counts[0], counts[1]


def check_file(path: Path, dataset: DatasetConfig | None = None) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Small-file convenience: (valid rows, errors) for one file with the default chat rules."""
    gate = Gate(dataset or DatasetConfig(), QualityConfig())
    gate.scan(path)
    valid = set(gate.valid.get(path.as_posix(), []))
    rows = [row for _, row in iter_rows(path, valid)] if valid else []
    return rows, gate.errors
