"""The validate stage's gate: stream every source file once, check every row, measure quality.

Pass 1 (`Gate.scan`) reads each JSONL file in blocks of whole lines, so a file larger than
memory is fine: it keeps only line numbers of valid rows and the small figures quality
checks need. For chat rows a fast path (`shaping.data.fastpath`) decodes a whole block with
msgspec types compiled from `dataset.schema`; a block it refuses is split until the refused
lines are found, and those go through the detailed line-by-line checks (orjson, the schema
rules, conversation structure, think tags), so each problem is reported exactly as they word
it. With `workers` > 1 a large file is cut into byte ranges at line boundaries, scanned in
forked processes and merged (line numbers and duplicates across ranges included). Pass 2
(`write_split`) reads the files again and writes the valid rows of the seeded train/eval
split. Every problem is a RowError naming file, line and field.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import random
import re
import statistics
import string
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from operator import attrgetter, not_
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import orjson

from shaping.config.schema import DatasetConfig, QualityConfig
from shaping.data.fastpath import ChatMessage, FastPath, block_is_plain, compile_chat_fast_path, roles_are_valid
from shaping.data.messages import validate_messages
from shaping.data.schema import compile_schema
from shaping.data.think_tags import validate_think_tags

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# near-duplicate key: the reply lowercased, without punctuation and whitespace (all ASCII, so the
# same characters can be dropped from its UTF-8 bytes, and ASCII text lowercased as bytes)
_DROP = (string.punctuation + string.whitespace).encode()
_LOWER = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
_HEAD = 300  # error patterns look at the first characters of each reply
BLOCK_BYTES = 1 << 16  # read and decoded at a time
SLOW_LINES = 8  # a refused block this small is checked line by line
MIN_SHARD_BYTES = 4 << 20  # smaller files are not worth a process


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


def near_key(reply: str) -> int:
    """Equal for replies equal after lowercasing and dropping punctuation and whitespace."""
    if reply.isascii():
        return hash(reply.encode().translate(_LOWER, _DROP))
    return hash(reply.lower().encode().translate(None, _DROP))


@dataclass
class Quality:
    """Running figures for the quality checks, O(1) memory per row (two hashes, one length).

    Duplicates are counted as rows minus distinct keys, so figures from separate parts of the
    data merge exactly (`merge`); the distinct-n sample is the first `distinct_sample` replies.
    """

    cfg: QualityConfig
    rows: int = 0
    exact: set[int] = field(default_factory=set)
    duplicates: int = 0
    near: set[int] = field(default_factory=set)
    near_duplicates: int = 0
    error_like: int = 0
    lengths: list[int] = field(default_factory=list)
    sample: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # one regex each: an alternation would defeat the fast paths for anchored and literal patterns
        self._error_like = [re.compile(p, re.IGNORECASE) for p in self.cfg.error_patterns]

    def add(self, key: int, reply: str) -> None:
        """`key`: a hash of the row's training content; `reply`: the text to judge."""
        self.add_many([key], [reply])

    def add_many(self, keys: list[int], replies: list[str]) -> None:
        """Many rows at once: the same figures as `add` for each in turn, at C speed."""
        self.rows += len(keys)
        before = len(self.exact)
        self.exact.update(keys)
        self.duplicates += len(keys) - (len(self.exact) - before)
        if all(map(str.isascii, replies)):
            near = map(
                hash, map(bytes.translate, map(str.encode, replies), itertools.repeat(_LOWER), itertools.repeat(_DROP))
            )
        else:
            near = map(near_key, replies)
        before = len(self.near)
        self.near.update(near)
        self.near_duplicates += len(keys) - (len(self.near) - before)
        self.lengths.extend(map(len, replies))
        left = replies
        for pattern in self._error_like:  # counts replies matching any pattern, each once
            found = list(map(pattern.search, left, itertools.repeat(0), itertools.repeat(_HEAD)))
            hits = len(found) - found.count(None)
            if hits:
                self.error_like += hits
                left = list(itertools.compress(left, map(not_, found)))
        room = self.cfg.distinct_sample - len(self.sample)
        if room > 0:
            self.sample.extend(replies[:room])

    def merge(self, other: Quality) -> None:
        """Fold in the figures of rows that come after this one's (another part of the data)."""
        self.rows += other.rows
        self.exact |= other.exact
        self.duplicates = self.rows - len(self.exact)
        self.near |= other.near
        self.near_duplicates = self.rows - len(self.near)
        self.error_like += other.error_like
        self.lengths.extend(other.lengths)
        room = self.cfg.distinct_sample - len(self.sample)
        if room > 0:
            self.sample.extend(other.sample[:room])

    def _distinct(self) -> tuple[int, int, int, int]:
        """(distinct unigrams, unigrams, distinct bigrams, bigrams) over the sample."""
        unigrams: set[str] = set()
        bigrams: set[tuple[str, str]] = set()
        unigram_total = bigram_total = 0
        for reply in self.sample:
            words = reply.lower().translate(_PUNCTUATION).split()
            unigrams.update(words)
            bigrams.update(itertools.pairwise(words))
            unigram_total += len(words)
            bigram_total += max(0, len(words) - 1)
        return len(unigrams), unigram_total, len(bigrams), bigram_total

    def checks(self, upstream_share: float) -> dict[str, dict[str, Any]]:
        q, n = self.cfg, max(1, self.rows)
        median = statistics.median(self.lengths) if self.lengths else 0
        _, _, distinct_bigrams, bigram_total = self._distinct()
        distinct_2 = distinct_bigrams / bigram_total if bigram_total else 0.0

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
        distinct_unigrams, unigram_total, _, _ = self._distinct()

        def pct(p: float) -> float:
            return float(ordered[min(len(ordered) - 1, int(p * len(ordered)))])

        return {
            "mean": round(sum(ordered) / len(ordered), 1),
            "p5": pct(0.05),
            "p50": pct(0.5),
            "p95": pct(0.95),
            "max": float(ordered[-1]),
            "distinct_1": round(distinct_unigrams / unigram_total, 4) if unigram_total else 0.0,
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
    """Checks rows of one dataset format against the schema, structure and think-tag rules.

    `workers`: processes for one large file (1: none; 0: one per CPU core). They are forked,
    so they share this process's string hashes, which the duplicate checks compare.
    """

    def __init__(self, dataset: DatasetConfig, quality: QualityConfig, workers: int = 1) -> None:
        if dataset.format not in ("chat", "preference"):
            raise ValueError(f"dataset.format={dataset.format!r}: choose chat or preference")
        if workers < 0:
            raise ValueError(f"validation.workers={workers}: use 1 or more, or 0 for one per CPU core")
        self.dataset = dataset
        self.workers = workers or os.cpu_count() or 1
        self.schema = compile_schema(dataset.schema)
        self.quality = Quality(quality)
        self.errors: list[RowError] = []
        self.sources: dict[str, SourceStats] = {}
        self.valid: dict[str, list[int]] = {}
        self.fast: FastPath | None = compile_chat_fast_path(dataset.schema) if dataset.format == "chat" else None
        self._message: type[ChatMessage] = self.fast.message_type if self.fast else ChatMessage
        self._row_check: Callable[[dict[str, Any]], tuple[list[tuple[str, str]], int, str]] = (
            self._check_chat if dataset.format == "chat" else self._check_preference
        )

    # one row ---------------------------------------------------------------------------------
    def _check_chat(self, row: dict[str, Any]) -> tuple[list[tuple[str, str]], int, str]:
        problems: list[tuple[str, str]] = []
        messages = row.get("messages")
        for message in validate_messages(messages):
            where, _, text = message.partition(": ")
            problems.append((where, text))
        if problems or not isinstance(messages, list):
            return problems, 0, ""
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                ok, error = validate_think_tags(m["content"])
                if not ok:
                    problems.append((f"messages[{i}].content", f"think tags: {error}"))
        message_type = self._message
        key = hash(tuple(message_type(role=m["role"], content=m["content"]) for m in messages))
        return problems, key, messages[-1]["content"]

    def _check_preference(self, row: dict[str, Any]) -> tuple[list[tuple[str, str]], int, str]:
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
        whole = hash((texts.get("prompt"), texts.get("chosen"), texts.get("rejected")))
        return problems, whole, texts.get("chosen", "")

    # one file --------------------------------------------------------------------------------
    def scan(self, path: Path, upstream_errors: int = 0) -> None:
        name = path.as_posix()
        stats = self.sources.setdefault(name, SourceStats(upstream_errors=upstream_errors))
        valid = self.valid.setdefault(name, [])
        if not path.is_file():
            self.errors.append(RowError(name, 0, "file", "not found (did its synthesize stage run?)"))
            return
        ranges = _line_ranges(path, self.workers)
        if len(ranges) == 1:
            part = _Part(name, self.quality)
            self._scan_range(path, 0, ranges[0][1], part)
            parts = [part]
        else:
            parts = _scan_forked(self, path, ranges)
        for part in parts:  # line numbers in each part count from its first line
            offset = stats.lines
            if offset:
                self.errors.extend(RowError(e.file, e.line + offset, e.field, e.message) for e in part.errors)
                valid.extend(line + offset for line in part.valid)
            else:
                self.errors.extend(part.errors)
                valid.extend(part.valid)
            stats.lines += part.lines
            stats.valid += len(part.valid)
            if part.quality is not self.quality:
                self.quality.merge(part.quality)

    def _scan_range(self, path: Path, start: int, end: int, part: _Part) -> None:
        """Every line that starts in [start, end) of `path` (start is 0 or just after a newline)."""
        carry = b""
        with path.open("rb") as handle:
            handle.seek(start)
            left = end - start
            while left > 0:
                data = handle.read(min(BLOCK_BYTES, left))
                if not data:
                    break
                left -= len(data)
                data = carry + data if carry else data
                if left > 0:
                    cut = data.rfind(b"\n") + 1
                    data, carry = data[:cut], data[cut:]
                else:
                    carry = b""
                if data:
                    self._block(data, part, file_start=start == 0 and part.lines == 0)
        if carry:
            self._block(carry, part, file_start=start == 0 and part.lines == 0)

    def _block(self, block: bytes, part: _Part, file_start: bool) -> None:
        """A run of whole lines (the last may lack its newline): fast path, else halves, else line by line."""
        count = block.count(b"\n") + (not block.endswith(b"\n"))
        fast = self.fast
        # msgspec reads a trailing CR as whitespace; the detailed checks report CRLF and the BOM
        if fast is not None and b"\r" not in block and not (file_start and block.startswith(BOM)):
            rows = None
            if part.try_strict and (not fast.strict_needs_plain or block_is_plain(block)):
                rows = _decode_lines(fast.strict, block, count)
                part.try_strict = rows is not None
            if rows is None and block_is_plain(block):
                rows = _decode_lines(fast.decoder, block, count)
            if rows is not None:
                self._fast_rows(rows, block, part)
                return
        if fast is None or count <= SLOW_LINES:
            self._slow_lines(block, part, file_start)
            return
        mid = block.rfind(b"\n", 0, len(block) // 2) + 1 or block.find(b"\n") + 1
        self._block(block[:mid], part, file_start)
        self._block(block[mid:], part, False)

    def _fast_rows(self, rows: list[Any], block: bytes, part: _Part) -> None:
        """Rows that msgspec accepted: the remaining rules, then the quality figures, a block at a time."""
        assert self.fast is not None
        n = len(rows)
        conversations = list(map(_MESSAGES, rows))
        messages = list(itertools.chain.from_iterable(conversations))
        roles = list(map(_ROLE, messages))
        refused: set[int] = set()
        if len(messages) == 2 * n and roles[0::2].count("user") == n and roles[1::2].count("assistant") == n:
            replies = list(map(_CONTENT, messages[1::2]))
            contents = [*map(_CONTENT, messages[0::2]), *replies]
            replies_only = True
        else:
            signatures = list(map(tuple, map(map, itertools.repeat(_ROLE), conversations)))
            wrong = [s for s in set(signatures) if not _roles_ok(s)]
            if wrong:
                refused.update(i for i, s in enumerate(signatures) if s in wrong)
            contents = list(map(_CONTENT, messages))
            replies = [m[-1].content for m in conversations]
            replies_only = False
        thinking = replies if replies_only else contents  # the assistant's are the replies
        if any(map(str.isspace, contents)) or any(map(str.__contains__, thinking, itertools.repeat("think>"))):
            for i, conversation in enumerate(conversations):
                for m in conversation:
                    if m.content.isspace() or (m.role == "assistant" and not validate_think_tags(m.content)[0]):
                        refused.add(i)
        for getter in self.fast.blank_fields:
            values = list(map(getter, rows))
            if any(map(str.isspace, filter(None, values))):
                refused.update(i for i, v in enumerate(values) if v is not None and v.isspace())
        first = part.lines + 1
        if not refused:
            part.lines += n
            part.valid.extend(range(first, first + n))
            part.quality.add_many(list(map(hash, map(tuple, conversations))), replies)
            return
        lines = block.split(b"\n")
        done = 0
        for i in [*sorted(refused), n]:
            if i > done:  # rows done..i-1 passed
                part.lines += i - done
                part.valid.extend(range(first + done, first + i))
                part.quality.add_many(list(map(hash, map(tuple, conversations[done:i]))), replies[done:i])
            if i < n:
                part.lines += 1
                self._line(lines[i], i < len(lines) - 1, part)
            done = i + 1

    def _slow_lines(self, block: bytes, part: _Part, file_start: bool) -> None:
        lines = block.split(b"\n")
        last = len(lines) - 1
        if lines[last] == b"":
            lines.pop()
            last -= 1
        for i, raw in enumerate(lines):
            part.lines += 1
            if file_start and part.lines == 1 and raw.startswith(BOM):
                part.errors.append(RowError(part.name, 1, "encoding", "starts with a UTF-8 byte-order mark; remove it"))
                raw = raw[3:]
            self._line(raw, i < last or block.endswith(b"\n"), part)

    def _line(self, raw: bytes, had_newline: bool, part: _Part) -> None:
        """The detailed checks for one line (its number is part.lines), each problem worded for people."""
        name, lineno, errors = part.name, part.lines, part.errors
        if raw.endswith(b"\r"):
            errors.append(RowError(name, lineno, "encoding", "CRLF line ending; use \\n"))
            raw = raw[:-1]
        if not raw.strip():
            errors.append(RowError(name, lineno, "line", "blank line"))
            return
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            errors.append(RowError(name, lineno, *_json_problem(raw, err, had_newline)))
            return
        if not isinstance(row, dict):
            errors.append(RowError(name, lineno, "row", f"expected an object, got {type(row).__name__}"))
            return
        problems = self.schema(row)
        found, key, reply = self._row_check(row)
        seen = {where for where, _ in problems}
        problems.extend(p for p in found if p[0] not in seen)  # one message per field
        if problems:
            errors.extend(RowError(name, lineno, where, text) for where, text in problems)
            return
        part.valid.append(lineno)
        part.quality.add(key, reply)

    @property
    def valid_rows(self) -> int:
        return sum(len(lines) for lines in self.valid.values())

    def upstream_share(self) -> float:
        produced = sum(s.lines + s.upstream_errors for s in self.sources.values())
        failed = sum(s.upstream_errors for s in self.sources.values())
        return failed / produced if produced else 0.0


_ROLES_OK: dict[tuple[str, ...], bool] = {}
_MESSAGES, _ROLE, _CONTENT = attrgetter("messages"), attrgetter("role"), attrgetter("content")


def _decode_lines(decoder: msgspec.json.Decoder[Any], block: bytes, count: int) -> list[Any] | None:
    """One row per line, or None if any line is refused (decode_lines skips blank lines: count them)."""
    try:
        rows = decoder.decode_lines(block)
    except (msgspec.DecodeError, RecursionError):  # a ValidationError is a DecodeError
        return None
    return rows if len(rows) == count else None


def _roles_ok(roles: tuple[str, ...]) -> bool:
    ok = _ROLES_OK.get(roles)
    if ok is None:
        ok = _ROLES_OK[roles] = roles_are_valid(roles)
    return ok


@dataclass
class _Part:
    """What scanning some lines of one file found; line numbers count from the part's first line."""

    name: str
    quality: Quality
    lines: int = 0
    try_strict: bool = True  # the strict decoder until a block needs the lenient one
    errors: list[RowError] = field(default_factory=list)
    valid: list[int] = field(default_factory=list)


def _line_ranges(path: Path, workers: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about equal size, each starting at a line."""
    size = path.stat().st_size
    n = min(workers, max(1, size // MIN_SHARD_BYTES))
    if n <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [(0, size)]
    starts = [0]
    with path.open("rb") as handle:
        for k in range(1, n):
            handle.seek(max(starts[-1], size * k // n))
            handle.readline()  # to the start of the next line
            at = handle.tell()
            if at < size and at > starts[-1]:
                starts.append(at)
    return list(zip(starts, [*starts[1:], size], strict=True))


_FORKED: Gate | None = None  # the gate a forked worker scans with


def _scan_part(job: tuple[str, int, int]) -> tuple[_Part, int]:
    path, start, end = job
    assert _FORKED is not None
    part = _Part(Path(path).as_posix(), Quality(_FORKED.quality.cfg))
    _FORKED._scan_range(Path(path), start, end, part)
    return part, hash("shaping")


def _scan_forked(gate: Gate, path: Path, ranges: list[tuple[int, int]]) -> list[_Part]:
    global _FORKED
    _FORKED = gate
    try:
        with multiprocessing.get_context("fork").Pool(len(ranges)) as pool:
            results = pool.map(_scan_part, [(str(path), start, end) for start, end in ranges])
    finally:
        _FORKED = None
    if any(probe != hash("shaping") for _, probe in results):  # forked workers share the hash seed
        raise RuntimeError("validation workers hash strings differently; set validation.workers=1")
    return [part for part, _ in results]


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
