"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
llama.cpp, Ollama, `python -m shaping.serve`).

Requests go out concurrently over aiohttp (orjson bodies), at most `max_concurrency` at a
time, spread round-robin over the spec's `base_url`s. 429, 5xx, connection errors and
timeouts are retried with exponential backoff and jitter, honouring `Retry-After`; after
`max_retries` the request fails on its own (the record becomes an `__ERROR__`). 401/403
and 404 stop the run at once with a message naming the model and URL, never the key (a URL
carrying credentials is refused before any request: `redact.check_base_url`).

The first attempt of a request runs straight, not inside a retry object: at thousands of
requests per second the client's own CPU time per request is the bottleneck.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

import aiohttp
import orjson

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference.redact import check_base_url
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
        for url in urls:
            check_base_url(name, url)  # first: the messages below name the URL
            if not url.startswith(("http://", "https://")):
                raise ShapingError(f"models.{name}.base_url={url!r}: not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
        self.name = name
        self.model = spec.model
        self.urls = urls
        self.defaults = defaults
        self.max_concurrency = max(1, spec.max_concurrency)
        self.max_retries = max(0, spec.max_retries)
        self.timeout_s = spec.timeout_s
        self.backoff_initial_s = spec.backoff_initial_s
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
        self._base_body = self._translate(defaults)
        # a session and a semaphore belong to one event loop: made on first use in each
        self._session: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _translate(options: dict[str, Any]) -> dict[str, Any]:
        return {RENAMED.get(k, k): v for k, v in options.items() if k not in DROPPED and v is not None}

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": request.messages, **self._base_body}
        if request.options:
            body.update(self._translate(request.options))
            # an option set to None in the request drops the default
            for key, value in request.options.items():
                if value is None:
                    body.pop(RENAMED.get(key, key), None)
        return body

    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        """One response per request, in order, sent concurrently (a blocking call for scripts and
        tests; the pipeline engine calls `complete`). `on_response` as each one arrives."""

        async def run() -> list[ChatResponse]:
            async def one(index: int, request: ChatRequest) -> ChatResponse:
                response = await self.complete(request)
                if on_response is not None:
                    on_response(index, response)
                return response

            try:
                return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
            finally:
                await self.aclose()

        return asyncio.run(run())

    def _session_here(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._session is None or self._semaphore is None or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self.max_concurrency * len(self.urls))
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._session, self._semaphore

    async def aclose(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._semaphore = self._loop = None

    async def complete(self, request: ChatRequest, order: tuple[int, int] = (0, 0)) -> ChatResponse:
        session, semaphore = self._session_here()
        payload = orjson.dumps(self.body(request))
        async with semaphore:
            attempt = 1
            while True:
                try:
                    return await self._post(session, next(self._next_url), payload)
                except _Retryable as err:
                    if attempt > self.max_retries:
                        return ChatResponse(text=None, error=f"{err} (gave up after {attempt} attempts)")
                    await asyncio.sleep(self._backoff(attempt, err))
                    attempt += 1

    def _backoff(self, attempt: int, error: _Retryable) -> float:
        """Seconds before retry `attempt`: the server's Retry-After, else exponential with jitter."""
        if error.retry_after is not None:
            return min(error.retry_after, self.backoff_max_s)
        exponential = self.backoff_initial_s * 2 ** (attempt - 1)
        return min(self.backoff_max_s, exponential + random.uniform(0, self.backoff_initial_s))

    async def _post(self, session: aiohttp.ClientSession, url: str, payload: bytes) -> ChatResponse:
        try:
            async with session.post(f"{url}/chat/completions", data=payload) as reply:
                body = await reply.read()
                status = reply.status
                retry_after = _retry_after(reply.headers.get("Retry-After")) if status != 200 else None
        except (TimeoutError, aiohttp.ClientError) as err:  # connection, payload cut short, ...
            raise _Retryable(f"{self._where(url)}: {type(err).__name__}: {err}") from err
        if status == 200:
            try:
                data = orjson.loads(body)
                choice = data["choices"][0]
                text = choice["message"]["content"]
                tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                return ChatResponse(text=None, error=f"{self._where(url)}: unreadable response: {err}")
            return ChatResponse(text=text or "", finish_reason=choice.get("finish_reason"), completion_tokens=tokens)
        where = self._where(url)
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

    def _where(self, url: str) -> str:
        return f"models.{self.name} ({self.model!r} at {url})"
