"""Requests and responses every generation backend speaks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, max_new_tokens, ...
    # What identifies this request and its sample index (the engine hashes the model's registry name,
    # the messages, options and sample index). A sampling backend
    # seeds the request's own random stream from it and its seed (`request_seed`), so the reply depends on
    # the request alone, never on which requests shared its batch or when it arrived. None: unseeded.
    key: str | None = None


def request_seed(seed: int, key: str) -> int:
    """The sampling seed of the request keyed `key` under a backend's `seed`: 63 bits of a hash of both."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class ChatResponse:
    text: str | None
    error: str | None = None
    finish_reason: str | None = None  # "stop" (eos) or "length"
    completion_tokens: int = 0
    cached: bool = False  # answered from the pipeline's response cache, not sent

    @property
    def is_success(self) -> bool:
        return self.error is None and self.text is not None


class ChatBackend(Protocol):
    """A batch backend (hf, vllm, tinker): the engine hands it the requests that arrive together
    (`inference.batching.BatchingBackend`), in a worker thread."""

    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        """One response per request, in order. A failed request gives a response with `error` set.
        `on_response(index, response)` is called as each one arrives (the response cache)."""
        ...


@runtime_checkable
class AsyncChatBackend(Protocol):
    """A backend that takes requests one at a time, concurrently (openai; a batch backend behind
    `BatchingBackend`). `order` sorts requests that arrive together (record index, position), so a
    batch backend forms the same batches run after run."""

    async def complete(self, request: ChatRequest, order: tuple[int, int] = (0, 0)) -> ChatResponse: ...

    async def aclose(self) -> None:
        """Release what belongs to the running event loop (sessions, tasks); the engine calls it
        before the loop ends, and the backend may be used again from a new loop."""
        ...
