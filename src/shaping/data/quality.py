"""The validation gate's quality figures, gathered a block of rows at a time.

Per row the gate keeps two 64-bit keys (the whole conversation, and the reply's near-duplicate
key) and the reply length, in flat arrays rather than Python sets and lists: 8 bytes an entry
instead of ~60, appended at C speed, counted by one numpy sort, and a worker's figures pickle as
a memory copy. Duplicates are counted as rows minus distinct keys, so figures from separate
parts of the data merge exactly (`Quality.merge`).
"""

from __future__ import annotations

import itertools
import re
import string
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import not_
from typing import Any, Literal

import numpy as np
import xxhash

from shaping.config.schema import QualityConfig
from shaping.errors import ShapingError

_PUNCTUATION = str.maketrans("", "", string.punctuation)
# distinct-n words of an ASCII reply from its bytes: bytes.split() does not split at \x1c-\x1f as
# str.split() does, so those become spaces
_PUNCTUATION_BYTES = string.punctuation.encode()
_WORD_BYTES = bytes.maketrans(
    string.ascii_uppercase.encode() + b"\x1c\x1d\x1e\x1f", string.ascii_lowercase.encode() + b"    "
)
# near-duplicate key: the reply lowercased, without punctuation and whitespace (all ASCII, so the
# same characters can be dropped from its UTF-8 bytes, and ASCII text lowercased as bytes)
_DROP = (string.punctuation + string.whitespace).encode()
_LOWER = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
_HEAD = 300  # error patterns look at the first characters of each reply
_COMPACT_AT = 1 << 20  # pending keys sorted into the distinct ones at least this many at a time
digest = xxhash.xxh3_64_intdigest  # of bytes: several times faster than hash(), and unsalted


def conversation_key(contents: Sequence[str]) -> int:
    """Equal for conversations with the same texts (a valid conversation's roles follow from how many
    messages it has). The reply, most of the text, goes in as the digest of its UTF-8, which the
    fast path has at hand anyway for the near-duplicate key."""
    return hash((digest(contents[-1].encode()), *contents[:-1]))


def near_key(reply: str) -> int:
    """Equal for replies equal after lowercasing and dropping punctuation and whitespace."""
    if reply.isascii():
        return digest(reply.encode().translate(_LOWER, _DROP))
    return digest(reply.lower().encode().translate(None, _DROP))


def near_keys(replies: list[str], encoded: list[bytes]) -> Iterable[int]:
    """`near_key` of each reply (`encoded`: their UTF-8), at C speed when all are ASCII (str.lower is
    only needed otherwise)."""
    if all(map(str.isascii, replies)):
        return map(digest, map(bytes.translate, encoded, itertools.repeat(_LOWER), itertools.repeat(_DROP)))
    return map(near_key, replies)


class DistinctKeys:
    """Counts distinct 64-bit keys: appended to a flat array, deduplicated by sorting in bulk.

    `typecode`: "q" for signed keys (hash()), "Q" for unsigned ones (xxhash). Memory stays about
    8 bytes per distinct key (pending keys are folded in whenever they outnumber the distinct
    ones), and parts scanned separately merge exactly (`update`).
    """

    def __init__(self, typecode: str = "q") -> None:
        self._dtype = np.dtype(np.int64 if typecode == "q" else np.uint64)
        self._distinct: np.ndarray[Any, Any] = np.empty(0, dtype=self._dtype)  # sorted, no repeats
        self._pending = array(typecode)

    def extend(self, keys: Iterable[int]) -> None:
        self._pending.extend(keys)
        if len(self._pending) >= max(_COMPACT_AT, len(self._distinct)):
            self.compact()

    def compact(self) -> None:
        """Fold the pending keys into the sorted distinct ones (a worker does this before shipping)."""
        if self._pending:
            pending = np.frombuffer(self._pending, dtype=self._dtype)
            # quicksort for keys in no order; timsort when the sorted ones are most of them
            mostly_sorted = len(self._distinct) >= len(pending)
            self._distinct = _sorted_distinct([self._distinct, pending], "stable" if mostly_sorted else "quicksort")
            self._pending = array(self._pending.typecode)

    def update(self, other: DistinctKeys) -> None:
        other.compact()
        self.compact()
        self._distinct = _sorted_distinct([self._distinct, other._distinct], "stable")

    def __len__(self) -> int:
        self.compact()
        return len(self._distinct)


def _sorted_distinct(parts: list[np.ndarray[Any, Any]], kind: Literal["quicksort", "stable"]) -> np.ndarray[Any, Any]:
    """The keys of all `parts`, sorted, each once. kind="stable" (timsort) merges sorted parts in
    linear time. np.unique is ~10x slower than this sort and mask (numpy 2.4, 1M keys)."""
    keys = np.concatenate(parts)
    keys.sort(kind=kind)
    if len(keys) < 2:
        return keys
    keep = np.empty(len(keys), dtype=bool)
    keep[0] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def _anchored_body(pattern: str) -> str | None:
    """`pattern` without its leading ^ when that ^ anchors all of it, else None.

    Conservative: a top-level |, any (?...) group but (?:...) (flags, names, lookarounds) or a
    numbered back-reference keeps the pattern on its own.
    """
    if not pattern.startswith("^"):
        return None
    depth, i, in_class = 0, 1, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1 : i + 2].isdigit():
                return None
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1 + pattern.startswith("^", i + 1)
            i += pattern.startswith("]", i)  # a ] first in a class (after any ^) is a literal
            continue
        elif c == "(":
            if pattern.startswith("(?", i) and not pattern.startswith("(?:", i):
                return None
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return None
        i += 1
    return pattern[1:]


def _error_matchers(patterns: list[str]) -> list[Callable[[str, int, int], re.Match[str] | None]]:
    """Callables that together find the replies matching any of `patterns` (case-insensitive).

    Patterns anchored with ^ share one regex tried only at the start (`match`), since a call costs
    about as much as an anchored search; the others keep one regex each, as an alternation with them
    would lose the literal-prefix search that makes `search` fast.
    """
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as err:
            raise ShapingError(f"validation.quality.error_patterns[{i}]={pattern!r}: not a regex ({err})") from None
    bodies = [_anchored_body(pattern) for pattern in patterns]
    anchored = [body for body in bodies if body is not None]
    if len(anchored) < 2:
        return [regex.search for regex in compiled]
    together = re.compile("|".join(f"(?:{body})" for body in anchored), re.IGNORECASE)
    return [together.match, *(regex.search for regex, body in zip(compiled, bodies, strict=True) if body is None)]


@dataclass
class Quality:
    """Running figures for the quality checks: two keys and one length per row, a sample of replies.

    The distinct-n sample is the first `distinct_sample` replies.
    """

    cfg: QualityConfig
    rows: int = 0
    exact: DistinctKeys = field(default_factory=DistinctKeys)
    near: DistinctKeys = field(default_factory=lambda: DistinctKeys("Q"))
    error_like: int = 0
    lengths: array[int] = field(default_factory=lambda: array("q"))
    sample: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ranked = np.empty(0, dtype=np.int64)  # lengths with the ranks _length_at needs in place
        self._ngram_counts: tuple[int, int, int, int] | None = None
        self._ngrams_of = 0
        self._error_like = _error_matchers(self.cfg.error_patterns)

    @property
    def duplicates(self) -> int:
        return self.rows - len(self.exact)

    @property
    def near_duplicates(self) -> int:
        return self.rows - len(self.near)

    def add(self, key: int, reply: str) -> None:
        """`key`: the row's `conversation_key` (or another hash of its training content); `reply`: the
        text to judge."""
        self.add_many([key], [reply], [reply.encode()])

    def add_many(self, keys: list[int], replies: list[str], encoded: list[bytes]) -> None:
        """Many rows at once: the same figures as `add` for each in turn, at C speed (`encoded`: the
        replies' UTF-8)."""
        self.rows += len(keys)
        self.exact.extend(keys)
        self.near.extend(near_keys(replies, encoded))
        self.lengths.extend(map(len, replies))
        left = replies
        for matcher in self._error_like:  # counts replies matching any pattern, each once
            found = list(map(matcher, left, itertools.repeat(0), itertools.repeat(_HEAD)))
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
        self.exact.update(other.exact)
        self.near.update(other.near)
        self.error_like += other.error_like
        self.lengths.extend(other.lengths)
        room = self.cfg.distinct_sample - len(self.sample)
        if room > 0:
            self.sample.extend(other.sample[:room])

    def _ngrams(self) -> tuple[int, int, int, int]:
        """(distinct unigrams, unigrams, distinct bigrams, bigrams) over the sample's words: each reply
        lowercased, without punctuation, split at whitespace (computed once, for both figures)."""
        if self._ngram_counts is not None and self._ngrams_of == len(self.sample):
            return self._ngram_counts
        unigrams: set[bytes] = set()
        bigrams: set[tuple[bytes, bytes]] = set()
        unigram_total = bigram_total = 0
        for reply in self.sample:
            if reply.isascii():  # the same words as below, as bytes, without the slow str.translate
                words = reply.encode().translate(_WORD_BYTES, _PUNCTUATION_BYTES).split()
            else:
                words = list(map(str.encode, reply.lower().translate(_PUNCTUATION).split()))
            unigrams.update(words)
            bigrams.update(itertools.pairwise(words))
            unigram_total += len(words)
            bigram_total += max(0, len(words) - 1)
        self._ngram_counts = (len(unigrams), unigram_total, len(bigrams), bigram_total)
        self._ngrams_of = len(self.sample)
        return self._ngram_counts

    def _length_at(self, rank: int) -> int:
        """The length of rank `rank` (0 = shortest) among all replies.

        One np.partition places every rank the figures use (linear time, not a sort), once.
        """
        n = len(self.lengths)
        if len(self._ranked) != n:
            wanted = {min(n - 1, max(0, r)) for r in (n // 2 - 1, n // 2, int(0.05 * n), int(0.95 * n), n - 1)}
            self._ranked = np.partition(np.frombuffer(self.lengths, dtype=np.int64), sorted(wanted))
        return int(self._ranked[rank])

    def _median_length(self) -> float:
        """statistics.median of the lengths: the middle one (an int), or the mean of the middle two."""
        n = len(self.lengths)
        if n % 2:
            return self._length_at(n // 2)
        return (self._length_at(n // 2 - 1) + self._length_at(n // 2)) / 2

    def checks(self, upstream_share: float) -> dict[str, dict[str, Any]]:
        q, n = self.cfg, max(1, self.rows)
        median = self._median_length() if self.lengths else 0
        _, _, distinct_bigrams, bigram_total = self._ngrams()
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
        n = len(self.lengths)
        distinct_unigrams, unigram_total, _, _ = self._ngrams()

        def pct(p: float) -> float:
            return float(self._length_at(min(n - 1, int(p * n))))

        return {
            "mean": round(int(np.frombuffer(self.lengths, dtype=np.int64).sum()) / n, 1),  # exact integer sum
            "p5": pct(0.05),
            "p50": pct(0.5),
            "p95": pct(0.95),
            "max": float(self._length_at(n - 1)),
            "distinct_1": round(distinct_unigrams / unigram_total, 4) if unigram_total else 0.0,
        }
