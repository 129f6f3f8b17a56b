"""The response cache: every answered request, content-addressed, in SQLite (WAL).

A request's key hashes (model id, messages as sent, sampling options, sample index), so a
re-run after a crash or Ctrl-C re-sends no request that was answered: each answer is
committed as it arrives. Failed requests are not cached (a re-run retries them).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from shaping.inference.types import ChatResponse


def request_key(model_id: str, messages: list[dict[str, str]], options: dict[str, Any], sample_index: int) -> str:
    payload = orjson.dumps([model_id, messages, options, sample_index], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(payload, digest_size=20).hexdigest()


class ResponseCache:
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

    def get(self, key: str) -> ChatResponse | None:
        if not self.read:
            return None
        row = self.db.execute(
            "SELECT text, finish_reason, completion_tokens FROM responses WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return ChatResponse(text=row[0], finish_reason=row[1], completion_tokens=row[2] or 0, cached=True)

    def put(self, key: str, response: ChatResponse) -> None:
        """Store one successful answer now (autocommit: it survives a SIGKILL right after)."""
        if response.is_success and not response.cached:
            self.db.execute(
                "INSERT OR REPLACE INTO responses (key, text, finish_reason, completion_tokens) VALUES (?, ?, ?, ?)",
                (key, response.text, response.finish_reason, response.completion_tokens),
            )

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self.db.close()
