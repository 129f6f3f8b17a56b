"""The response cache: every answered request, content-addressed, in SQLite (WAL).

A request's key hashes (model id, messages as sent, sampling options, sample index), so a
re-run after a crash or Ctrl-C re-sends no request that was answered. Answers are committed
in batches: the engine calls `commit()` once per turn of its event loop, so a burst of
answers costs one transaction, not one each, and at most the answers of the current turn
(requests still in flight, in effect) are lost to a SIGKILL. Failed requests are not cached
(a re-run retries them).

The synthesis engine (shaping.pipeline) uses it for every pipeline; `complete_cached` asks one registry
model a list of requests through the same cache outside a pipeline (train=grpo's judge and teacher).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from shaping.inference.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from shaping.inference.registry import ModelRegistry

KNOWN_KEYS_MAX = 2_000_000  # about 100 MB of key prefixes in memory at most


def request_body(messages: list[dict[str, str]], options: dict[str, Any]) -> bytes:
    """A request's messages and options, serialized once however many payloads are made of them."""
    return orjson.dumps([messages, options], option=orjson.OPT_SORT_KEYS)


def payload_of(model: str, body: bytes) -> bytes:
    """`request_payload(model, messages, options)` from `request_body(messages, options)`: the same bytes."""
    return b"[" + orjson.dumps(model) + b"," + body[1:]


def request_payload(model_id: str, messages: list[dict[str, str]], options: dict[str, Any]) -> bytes:
    """What identifies a request, less its sample index (see `request_key`)."""
    return payload_of(model_id, request_body(messages, options))


def request_key_from_payload(payload: bytes, sample_index: int) -> str:
    # orjson writes compact JSON, so this is exactly the encoding of [model_id, messages, options, index]
    return hashlib.blake2b(payload[:-1] + b",%d]" % sample_index, digest_size=20).hexdigest()


def request_key(model_id: str, messages: list[dict[str, str]], options: dict[str, Any], sample_index: int) -> str:
    return request_key_from_payload(request_payload(model_id, messages, options), sample_index)


class ResponseCache:
    """`read=False` (--no-cache) ignores answers stored by earlier runs, not those of this run."""

    def __init__(self, path: Path, read: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.read = read
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "finish_reason TEXT, completion_tokens INTEGER, created TEXT DEFAULT CURRENT_TIMESTAMP)"
        )
        self._pending: dict[str, tuple[str, str | None, int]] = {}
        self._written: set[str] = set()  # keys stored by this run (what read=False may still answer from)
        # the stored keys' first 64 bits, read once: a request not among them is a miss without a
        # query (a fresh run's every request). Bigger caches than this are queried each time.
        self._known: set[int] | None = None
        if read and len(self) <= KNOWN_KEYS_MAX:
            self._known = {int(row[0][:16], 16) for row in self.db.execute("SELECT key FROM responses")}

    def get(self, key: str) -> ChatResponse | None:
        row: Any = self._pending.get(key)
        if row is None:
            if not self.read and key not in self._written:
                return None
            if self.read and self._known is not None and int(key[:16], 16) not in self._known:
                return None
            row = self.db.execute(
                "SELECT text, finish_reason, completion_tokens FROM responses WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
        return ChatResponse(text=row[0], finish_reason=row[1], completion_tokens=row[2] or 0, cached=True)

    def put(self, key: str, response: ChatResponse) -> None:
        """Queue one successful answer; `commit()` stores it."""
        if response.is_success and not response.cached and response.text is not None:
            self._pending[key] = (response.text, response.finish_reason, response.completion_tokens)

    def commit(self) -> int:
        """Store the queued answers in one transaction; how many."""
        if not self._pending:
            return 0
        rows = [(key, *value) for key, value in self._pending.items()]
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO responses (key, text, finish_reason, completion_tokens) VALUES (?, ?, ?, ?)", rows
        )
        self.db.execute("COMMIT")
        if not self.read:
            self._written.update(self._pending)
        elif self._known is not None:
            self._known.update(int(key[:16], 16) for key in self._pending)
        self._pending.clear()
        return len(rows)

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self.commit()
        self.db.close()


async def complete_cached(
    registry: ModelRegistry,
    name: str,
    conversations: list[list[dict[str, str]]],
    options: dict[str, Any],
    cache: ResponseCache | None = None,
) -> list[ChatResponse]:
    """One response per conversation from registry model `name`, in order. The requests go concurrently to
    its async backend (a batch backend, hf or vllm, gets them in generate() calls of up to max_concurrency;
    openai keeps max_concurrency in flight). The model's system prompt (sysprompt, sysprompt_file) is put first
    where a conversation has none, as the synthesis engine does. Identical requests are sent once; with
    `cache`, answered ones are read from it and new successful answers stored (committed before returning),
    keyed as the engine keys them: a request answered by a pipeline, or by an earlier call, is not sent again."""
    system = registry.system_prompt(name)
    merged = {**registry.defaults(name), **options}
    model_id = registry.model_id(name) if cache is not None else ""
    keys: list[str] = []
    unique: dict[str, tuple[str | None, ChatRequest]] = {}  # seed key -> (cache key, request)
    for messages in conversations:
        if system is not None and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        body = request_body(messages, merged)
        seed_key = request_key_from_payload(payload_of(name, body), 0)
        keys.append(seed_key)
        if seed_key not in unique:
            cache_key = request_key_from_payload(payload_of(model_id, body), 0) if cache is not None else None
            unique[seed_key] = (cache_key, ChatRequest(messages, dict(options), key=seed_key))
    answers: dict[str, ChatResponse] = {}
    missing: list[tuple[str, str | None, ChatRequest]] = []
    for seed_key, (cache_key, request) in unique.items():
        hit = cache.get(cache_key) if cache is not None and cache_key is not None else None
        if hit is not None:
            answers[seed_key] = hit
        else:
            missing.append((seed_key, cache_key, request))
    if missing:
        backend = registry.async_backend(name)
        try:
            sent = await asyncio.gather(
                *(backend.complete(request, (i, 0)) for i, (_, _, request) in enumerate(missing))
            )
        finally:
            await backend.aclose()
        for (seed_key, cache_key, _), response in zip(missing, sent, strict=True):
            answers[seed_key] = response
            if cache is not None and cache_key is not None:
                cache.put(cache_key, response)
        if cache is not None:
            cache.commit()
    return [answers[key] for key in keys]
