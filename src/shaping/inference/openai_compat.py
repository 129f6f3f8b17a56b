"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
llama.cpp, Ollama, `python -m shaping.serve`).

Requests go out concurrently over aiohttp (orjson bodies), at most `max_concurrency` at a
time, spread round-robin over the spec's `base_url`s. 429, 5xx, connection errors and
timeouts are retried with exponential backoff and jitter (tenacity), honouring `Retry-After`;
after `max_retries` the request fails on its own (the record becomes an `__ERROR__`). 401/403
and 404 stop the run at once with a message naming the model and URL, never the key.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference.types import ChatRequest, ChatResponse

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# request options the hf backend knows and an OpenAI endpoint spells differently or lacks
RENAMED = {"max_new_tokens": "max_tokens"}
DROPPED = {"min_new_tokens"}


class BackendFatalError(ShapingError):
    """A failure no retry can fix (bad key, unknown model or URL): the whole run stops."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time())
        except (TypeError, ValueError):
            return None


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return str(data["error"].get("message", ""))[:500]
        if isinstance(data, dict) and "detail" in data:
            return str(data["detail"])[:500]
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace")


class OpenAIBackend:
    def __init__(self, name: str, spec: ModelSpec, defaults: dict[str, Any]) -> None:
        urls = spec.base_url if isinstance(spec.base_url, list | tuple) else [spec.base_url]
        urls = [str(u).rstrip("/") for u in urls if u]
        if not urls:
            raise ShapingError(f"models.{name}.base_url: not set; the openai backend needs the endpoint's URL")
        self.name = name
        self.model = spec.model
        self.urls = urls
        self.defaults = defaults
        self.max_concurrency = max(1, spec.max_concurrency)
        self.max_retries = max(0, spec.max_retries)
        self.timeout_s = spec.timeout_s
        self.backoff = wait_exponential_jitter(multiplier=spec.backoff_initial_s, max=spec.backoff_max_s)
        self.backoff_max_s = spec.backoff_max_s
        self.headers = {"Content-Type": "application/json"}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise ShapingError(
                    f"models.{name}.api_key_env: environment variable {spec.api_key_env} is not set "
                    f"(the key for {self.urls[0]}); export it, keys never go in the config"
                )
            self.headers["Authorization"] = f"Bearer {key}"
        self._next_url = itertools.cycle(self.urls)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": request.messages}
        for key, value in {**self.defaults, **request.options}.items():
            if key in DROPPED or value is None:
                continue
            body[RENAMED.get(key, key)] = value
        return body

    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        """One response per request, in order; sent concurrently; `on_response` as each arrives."""
        return asyncio.run(self._generate_all(requests, on_response))

    async def _generate_all(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None
    ) -> list[ChatResponse]:
        semaphore = asyncio.Semaphore(self.max_concurrency)
        connector = aiohttp.TCPConnector(limit=self.max_concurrency * len(self.urls))
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)

        async def one(index: int, request: ChatRequest) -> ChatResponse:
            response = await self._one(session, semaphore, request)
            if on_response is not None:
                on_response(index, response)
            return response

        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers) as session:
            return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return min(error.retry_after, self.backoff_max_s)
        return float(self.backoff(state))

    async def _one(
        self, session: aiohttp.ClientSession, semaphore: asyncio.Semaphore, request: ChatRequest
    ) -> ChatResponse:
        payload = orjson.dumps(self.body(request))
        async with semaphore:
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.max_retries + 1),
                    wait=self._wait,
                    retry=retry_if_exception_type(_Retryable),
                    reraise=True,
                ):
                    with attempt:
                        return await self._post(session, next(self._next_url), payload)
            except _Retryable as err:
                return ChatResponse(text=None, error=f"{err} (gave up after {self.max_retries + 1} attempts)")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, session: aiohttp.ClientSession, url: str, payload: bytes) -> ChatResponse:
        where = f"models.{self.name} ({self.model!r} at {url})"
        try:
            async with session.post(f"{url}/chat/completions", data=payload) as reply:
                body = await reply.read()
                status = reply.status
                retry_after = _retry_after(reply.headers.get("Retry-After"))
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
            raise _Retryable(f"{where}: {type(err).__name__}: {err}") from err
        if status == 200:
            try:
                data = orjson.loads(body)
                choice = data["choices"][0]
                text = choice["message"]["content"]
                tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                return ChatResponse(text=None, error=f"{where}: unreadable response: {err}")
            return ChatResponse(text=text or "", finish_reason=choice.get("finish_reason"), completion_tokens=tokens)
        message = _error_message(body)
        if status in RETRY_STATUS:
            raise _Retryable(f"{where}: HTTP {status}: {message}", retry_after)
        if status in (401, 403):
            hint = (
                "check the key in the environment variable named by api_key_env"
                if "Authorization" in self.headers
                else "set models.<name>.api_key_env"
            )
            raise BackendFatalError(f"{where}: HTTP {status}, the endpoint refused the credentials; {hint}")
        if status == 404:
            raise BackendFatalError(f"{where}: HTTP 404: {message} (check models.{self.name}.model and base_url)")
        return ChatResponse(text=None, error=f"{where}: HTTP {status}: {message}")
