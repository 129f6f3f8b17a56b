"""A batch backend (`generate(list) -> list`) as an async one: the requests that arrive together
go to one `generate()` call, which runs in a worker thread so the event loop keeps feeding the
other models (an openai judge next to a local hf model) while the local model works."""

from __future__ import annotations

import asyncio
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shaping.inference.types import ChatBackend, ChatRequest, ChatResponse

log = logging.getLogger(__name__)

SETTLE_TURNS = 3  # event-loop turns without a new request before a batch goes out


@dataclass
class _Waiting:
    order: tuple[int, int]
    arrival: int
    request: ChatRequest
    future: asyncio.Future[ChatResponse]


class BatchingBackend:
    """Up to `max_batch` waiting requests per `generate()` call, one call at a time."""

    def __init__(self, backend: ChatBackend, max_batch: int, name: str = "") -> None:
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.name = name
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"generate-{name}")
        self._arrivals = itertools.count()
        self._waiting: list[_Waiting] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.calls = 0

    async def complete(self, request: ChatRequest, order: tuple[int, int] = (0, 0)) -> ChatResponse:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._wake is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._serve(loop), name=f"batching-{self.name}")
        future: asyncio.Future[ChatResponse] = loop.create_future()
        self._waiting.append(_Waiting(order, next(self._arrivals), request, future))
        self._wake.set()
        return await future

    async def _settle(self) -> None:
        """Wait until every record that can still send has done so (a few loop turns with no new
        request): a batch then holds the same requests run after run, so seeded sampling repeats."""
        seen, calm = -1, 0
        while calm < SETTLE_TURNS and len(self._waiting) < self.max_batch:
            await asyncio.sleep(0)
            calm = calm + 1 if len(self._waiting) == seen else 0
            seen = len(self._waiting)

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await self._settle()
            self._waiting.sort(key=lambda w: (w.order, w.arrival))
            batch = [w for w in self._waiting[: self.max_batch] if not w.future.done()]
            del self._waiting[: self.max_batch]
            if not self._waiting:
                self._wake.clear()
            if not batch:
                continue

            def deliver(index: int, reply: ChatResponse, batch: list[_Waiting] = batch) -> None:
                # called in the worker thread as each reply is ready: hand it to the loop at once
                loop.call_soon_threadsafe(_resolve, batch[index].future, reply)

            self.calls += 1
            try:
                replies = await loop.run_in_executor(
                    self._executor, self.backend.generate, [w.request for w in batch], deliver
                )
            except Exception as err:  # the model itself failed: every request of the batch fails with it
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(err)
                continue
            for waiting, reply in zip(batch, replies, strict=True):
                _resolve(waiting.future, reply)

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        for waiting in self._waiting:
            waiting.future.cancel()
        self._waiting.clear()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def _resolve(future: asyncio.Future[ChatResponse], reply: ChatResponse) -> None:
    if not future.done():
        future.set_result(reply)
