"""The validate stage's gate: stream every source file once, check every row, measure quality.

Pass 1 (`Gate.scan`) reads each JSONL file in blocks of whole lines, so a file larger than
memory is fine: it keeps only line numbers of valid rows and the small figures quality
checks need. For chat rows a fast path (`shaping.data.fastpath`) decodes a whole block with
msgspec types compiled from `dataset.schema`; a block it refuses is split until the refused
lines are found, and those go through the detailed line-by-line checks (orjson, the schema
rules, conversation structure, think tags), so each problem is reported exactly as they word
it. Quality figures go to `shaping.data.quality`, a block at a time. With `workers` > 1 a large
file is cut into byte ranges at line boundaries, scanned here and in forked processes, and
merged (line numbers and duplicates across ranges included). Pass 2
(`write_split`) reads the files again and writes the valid rows of the seeded train/eval
split. Every problem is a RowError naming file, line and field.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import multiprocessing
import os
import random
from array import array
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np
import orjson

from shaping.config.schema import DatasetConfig, QualityConfig
from shaping.data.fastpath import FastPath, block_is_plain, compile_chat_fast_path, roles_are_valid
from shaping.data.messages import validate_messages
from shaping.data.quality import Quality, conversation_key, digest
from shaping.data.schema import compile_schema
from shaping.data.think_tags import validate_think_tags

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
_NEWLINE = ord("\n")
BLOCK_BYTES = 1 << 16  # read and decoded at a time
SLOW_LINES = 8  # a refused block this small is checked line by line
MIN_SHARD_BYTES = 4 << 20  # smaller files are not worth a process


@dataclass
class RowError:
    file: str
    line: int
    field: str
    message: str
    row: int | None = None  # a dataset source's row index (its materialised file's line - 1); `file` is its URI

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.field}: {self.message}"


@dataclass
class SourceStats:
    lines: int = 0
    valid: int = 0
    upstream_errors: int = 0


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

    `workers`: processes for one large file (1: this one; N: this one and N-1 forked; 0: one per
    CPU core). Forked workers share this process's string hashes, which the duplicate checks compare.
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
        self.valid: dict[str, array[int]] = {}  # line numbers of valid rows, 8 bytes each
        self.fast: FastPath | None = compile_chat_fast_path(dataset.schema) if dataset.format == "chat" else None
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
        tools = row.get("tools")
        if tools is not None:
            problems.extend(_check_tools(tools, messages))
        if problems or not isinstance(messages, list):
            return problems, 0, ""
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and isinstance(m["content"], str):
                ok, error = validate_think_tags(m["content"])
                if not ok:
                    problems.append((f"messages[{i}].content", f"think tags: {error}"))
        if tools is not None or any(m["role"] == "tool" for m in messages):
            # roles and calls go into the key: a plain conversation's roles follow from its length, these don't
            texts = [orjson.dumps([m["role"], m["content"], m.get("tool_calls")]).decode() for m in messages[:-1]]
            key = conversation_key([orjson.dumps(tools).decode(), *texts, messages[-1]["content"]])
        else:
            key = conversation_key([m["content"] for m in messages])
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
        valid = self.valid.setdefault(name, array("q"))
        if not path.is_file():
            self.errors.append(RowError(name, 0, "file", "not found (did its synthesize stage run?)"))
            return
        ranges = _line_ranges(path, self.workers)
        part = _Part(name, self.quality)
        if len(ranges) == 1:
            self._scan_range(path, 0, ranges[0][1], part)
            parts = [part]
        else:
            parts = _scan_forked(self, path, ranges, part)
        for part in parts:  # line numbers in each part count from its first line
            offset = stats.lines
            if offset:
                self.errors.extend(RowError(e.file, e.line + offset, e.field, e.message) for e in part.errors)
            else:
                self.errors.extend(part.errors)
            if part.valid:
                runs = [np.arange(first + offset, stop + offset, dtype=np.int64) for first, stop in part.valid]
                valid.frombytes(np.concatenate(runs).tobytes())
            stats.lines += part.lines
            stats.valid += sum(stop - first for first, stop in part.valid)
            if part.quality is not self.quality:
                self.quality.merge(part.quality)

    def _scan_range(self, path: Path, start: int, end: int, part: _Part) -> None:
        """Every line that starts in [start, end) of `path` (start is 0 or just after a newline)."""
        if end <= start:
            return
        # a memory map: each block is one copy out of the page cache, cut at its last newline
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            pos = start
            while pos < end:
                cut = end
                if pos + BLOCK_BYTES < end:
                    cut = mapped.rfind(b"\n", pos, pos + BLOCK_BYTES) + 1
                    if cut <= pos:  # a line longer than a block: the block is that line
                        cut = mapped.find(b"\n", pos + BLOCK_BYTES, end) + 1 or end
                self._block(mapped[pos:cut], part, file_start=pos == 0)
                pos = cut

    def _block(self, block: bytes, part: _Part, file_start: bool) -> None:
        """A run of whole lines (the last may lack its newline): fast path, else halves, else line by line."""
        count = _count_lines(block)
        fast = self.fast
        # msgspec reads a trailing CR as whitespace; the detailed checks report CRLF and the BOM
        if fast is not None and b"\r" not in block and not (file_start and block.startswith(BOM)):
            decoded = _decode_block(fast, block, count, part)
            if decoded is not None:
                self._fast_rows(*decoded, block, part)
                return
        if fast is None or count <= SLOW_LINES:
            self._slow_lines(block, part, file_start)
            return
        mid = block.rfind(b"\n", 0, len(block) // 2) + 1 or block.find(b"\n") + 1
        self._block(block[:mid], part, file_start)
        self._block(block[mid:], part, False)

    def _fast_rows(self, rows: list[Any], pairs: bool, block: bytes, part: _Part) -> None:
        """Rows that msgspec accepted: the remaining rules, then the quality figures, a block at a time."""
        assert self.fast is not None
        n = len(rows)
        conversations = list(map(_MESSAGES, rows))
        refused: set[int] = set()
        if pairs:  # (user, assistant): the roles are checked, every message but the first is a reply
            prompts = list(map(_CONTENT, map(_FIRST, conversations)))
            replies = list(map(_CONTENT, map(_SECOND, conversations)))
            encoded = list(map(str.encode, replies))
            keys = list(map(hash, zip(map(digest, encoded), prompts, strict=True)))  # conversation_key
            blank = any(map(str.isspace, prompts)) or any(map(str.isspace, replies))
            thinking = replies
        else:
            signatures = list(map(tuple, map(map, itertools.repeat(_ROLE), conversations)))
            wrong = [s for s in set(signatures) if not _roles_ok(s)]
            if wrong:
                refused.update(i for i, s in enumerate(signatures) if s in wrong)
            texts = list(map(tuple, map(map, itertools.repeat(_CONTENT), conversations)))
            keys = list(map(conversation_key, texts))
            thinking = list(itertools.chain.from_iterable(texts))  # the loop below looks at the assistant's only
            blank = any(map(str.isspace, thinking))
            replies = list(map(_LAST, texts))
            encoded = list(map(str.encode, replies))
        # no ">" in the block, not even as a \u escape: no think tag to check in any reply
        tags = b">" in block or (b"\\" in block and b"\\u" in block)
        if blank or (tags and any(map(str.__contains__, thinking, itertools.repeat("think>")))):
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
            part.add_valid(first, first + n)
            part.quality.add_many(keys, replies, encoded)
            return
        lines = block.split(b"\n")
        done = 0
        for i in [*sorted(refused), n]:
            if i > done:  # rows done..i-1 passed
                part.lines += i - done
                part.add_valid(first + done, first + i)
                part.quality.add_many(keys[done:i], replies[done:i], encoded[done:i])
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
        part.add_valid(lineno, lineno + 1)
        part.quality.add(key, reply)

    @property
    def valid_rows(self) -> int:
        return sum(len(lines) for lines in self.valid.values())

    def upstream_share(self) -> float:
        produced = sum(s.lines + s.upstream_errors for s in self.sources.values())
        failed = sum(s.upstream_errors for s in self.sources.values())
        return failed / produced if produced else 0.0


def _check_tools(tools: Any, messages: Any) -> list[tuple[str, str]]:
    """A chat row's `tools` (the function schemas offered): a list of {type: function, function: {name, ...}};
    every tool call in the conversation names one of them."""
    shape = "a list of tool schemas {type: function, function: {name, description, parameters}}"
    if not isinstance(tools, list) or not tools:
        return [("tools", f"expected {shape} (or null)")]
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    for k, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name.strip():
            problems.append((f"tools[{k}]", f"expected {{type: function, function: {{name, ...}}}} ({shape})"))
        else:
            names.add(name)
    if problems or not isinstance(messages, list):
        return problems
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        for k, call in enumerate(calls if isinstance(calls, list) else []):
            function = call.get("function") if isinstance(call, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str) and name not in names:
                problems.append(
                    (f"messages[{i}].tool_calls[{k}].function.name", f"{name!r} is not among the row's tools")
                )
    return problems


_ROLES_OK: dict[tuple[str, ...], bool] = {}
_MESSAGES, _ROLE, _CONTENT = attrgetter("messages"), attrgetter("role"), attrgetter("content")
_FIRST, _SECOND, _LAST = itemgetter(0), itemgetter(1), itemgetter(-1)


def _decode_block(fast: FastPath, block: bytes, count: int, part: _Part) -> tuple[list[Any], bool] | None:
    """(rows, whether they are pairs) from the cheapest decoding that accepts every line; None if none does.

    A decoding refused where a later one accepted (a system message, an unknown field) is not
    tried again in this part; one refused with all the others (a bad row) is.
    """
    plain: bool | None = None
    failed: list[int] = []
    for i, decoding in enumerate(fast.decodings):
        if i in part.refusing:
            continue
        if decoding.needs_plain:
            if plain is None:
                plain = block_is_plain(block)
            if not plain:
                continue
        rows = _decode_lines(decoding.decoder, block, count)
        if rows is not None:
            part.refusing.update(failed)
            return rows, decoding.pairs
        failed.append(i)
    return None


def _count_lines(block: bytes) -> int:
    """Lines in a run of whole lines (the last may lack its newline); numpy counts 4x faster than bytes.count."""
    newlines = int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == _NEWLINE))
    return newlines + (not block.endswith(b"\n"))


def _decode_lines(decoder: msgspec.json.Decoder[Any], block: bytes, count: int) -> list[Any] | None:
    """One row per line, or None if any line is refused (decode_lines skips blank lines: count them)."""
    try:
        rows = decoder.decode_lines(block)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # a ValidationError is a DecodeError
        return None  # (bad UTF-8 in a field it reads raises UnicodeDecodeError)
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
    refusing: set[int] = field(default_factory=set)  # fast-path decodings this part's rows don't fit
    errors: list[RowError] = field(default_factory=list)
    valid: list[tuple[int, int]] = field(default_factory=list)  # runs [first, stop) of valid lines

    def add_valid(self, first: int, stop: int) -> None:
        if self.valid and self.valid[-1][1] == first:
            self.valid[-1] = (self.valid[-1][0], stop)
        else:
            self.valid.append((first, stop))


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
    part.quality.exact.compact()  # sorted here, in parallel, so the parent merges sorted arrays
    part.quality.near.compact()
    return part, hash("shaping")


def _scan_forked(gate: Gate, path: Path, ranges: list[tuple[int, int]], first: _Part) -> list[_Part]:
    """`first` gets the first range, scanned here while forked workers scan the others."""
    global _FORKED
    _FORKED = gate
    try:
        with multiprocessing.get_context("fork").Pool(len(ranges) - 1) as pool:
            pending = pool.map_async(_scan_part, [(str(path), start, end) for start, end in ranges[1:]])
            gate._scan_range(path, *ranges[0], first)
            results = pending.get()
    finally:
        _FORKED = None
    if any(probe != hash("shaping") for _, probe in results):  # forked workers share the hash seed
        raise RuntimeError("validation workers hash strings differently; set validation.workers=1")
    return [first, *(part for part, _ in results)]


def _json_problem(raw: bytes, err: orjson.JSONDecodeError, had_newline: bool) -> tuple[str, str]:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return "encoding", f"not valid UTF-8 at byte {bad.start}"
    hint = "" if had_newline else " (the last line looks truncated)"
    return "json", f"malformed JSON: {str(err).split(':')[0]}{hint}"


def choose_split(
    valid: Mapping[str, Sequence[int]], eval_fraction: float, seed: int, max_examples: int | None = None
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


def check_file(
    path: Path, dataset: DatasetConfig, quality: QualityConfig
) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Small-file convenience: (valid rows, errors) for one file under `dataset`'s format and rules."""
    gate = Gate(dataset, quality)
    gate.scan(path)
    valid = set(gate.valid.get(path.as_posix(), []))
    rows = [row for _, row in iter_rows(path, valid)] if valid else []
    return rows, gate.errors
