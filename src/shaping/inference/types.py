"""Requests and responses every generation backend speaks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, max_new_tokens, ...


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
    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        """One response per request, in order. A failed request gives a response with `error` set.
        `on_response(index, response)` is called as each one arrives (the response cache)."""
        ...
