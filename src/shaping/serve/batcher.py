"""Gathers concurrent requests into shared generate() calls, run off the event loop.

One consumer task runs generate() in a single worker thread, one batch at a time. Whenever that
thread is free it takes every request waiting (up to `max_batch_size` rows; a request with n
choices is n rows) and runs them at once; while a batch runs, new requests queue up for the next
one. Only when the queue is nearly empty (fewer than `max_batch_size // 8` rows waiting, at least
one) does a batch wait up to `window_s` for more to join it, so a burst arriving at an idle server
is not split into a batch of one and a batch of the rest.

Rows in one batch may differ in everything per-row: model (the base and any LoRA adapter of it;
`group_of` says which models can share a call), temperature, top-p, top-k, seed, max tokens and
stop strings. A seeded row samples from a generator of its own, so a greedy or seeded reply is
the one the request gets alone, whatever shares its batch. A batch runs until its longest row
ends (no iteration-level batching): clients that send their next request on each reply can
settle into two cohorts that alternate, batches of about half the requests in flight.

`call` runs other work on the model (loading or unloading an adapter) in the same thread,
between batches; a request whose model is gone by the time its batch runs fails alone with
ModelGone (`serves` says which models are served).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from shaping.inference.hf import Completion
from shaping.inference.types import request_seed
from shaping.serve.models import SamplingOptions

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
# (model of each row, conversations, options of each row) -> one reply per row
GenerateFn = Callable[[Sequence[str], list[Conversation], Sequence[SamplingOptions]], list[Completion]]
T = TypeVar("T")


class ModelGone(Exception):
    """The request's model was unloaded while the request waited."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


@dataclass(eq=False)
class Job:
    model: str
    conversation: Conversation
    n: int
    options: SamplingOptions
    future: asyncio.Future[list[Completion]] = field(repr=False)

    def row_options(self) -> list[SamplingOptions]:
        """The n choices' options: with a seed and n > 1, each choice its own stream derived from it."""
        if self.n == 1 or self.options.seed is None:
            return [self.options] * self.n
        return [replace(self.options, seed=request_seed(self.options.seed, str(j))) for j in range(self.n)]


def _same_group(model: str) -> Hashable:
    return model


def _serves_all(model: str) -> bool:
    return True


class Batcher:
    def __init__(
        self,
        generate: GenerateFn,
        max_batch_size: int,
        window_s: float,
        group_of: Callable[[str], Hashable] = _same_group,
        serves: Callable[[str], bool] = _serves_all,
    ) -> None:
        self.generate = generate
        self.group_of = group_of
        self.serves = serves
        self.max_batch_size = max(1, max_batch_size)
        self.window_s = window_s
        self.nearly_empty = max(1, self.max_batch_size // 8)
        self.batches = 0  # generate() calls made
        self.requests = 0  # requests answered through them
        self.rows = 0  # rows (requests x n) generated in them
        self.busy_s = 0.0  # time the generate thread has spent in generate()
        self._waiting: list[Job] = []  # in arrival order
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    async def submit(
        self, model: str, conversation: Conversation, n: int, options: SamplingOptions
    ) -> list[Completion]:
        """The `n` replies to `conversation`, once a batch holding it has run."""
        future: asyncio.Future[list[Completion]] = asyncio.get_running_loop().create_future()
        self._waiting.append(Job(model, conversation, n, options, future))
        self._arrived.set()
        return await future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in the generate thread, after the batch running now (never during one)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self) -> None:
        """Serve the queue until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._live_rows():
                self._arrived.clear()
                await self._arrived.wait()
            # nearly empty: wait up to window_s for more rows to join (a burst arriving at an idle
            # server); otherwise run what is waiting at once
            deadline = loop.time() + self.window_s
            while self._live_rows() < self.nearly_empty and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            await self._run(self._take_batch())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _live_rows(self) -> int:
        self._waiting = [job for job in self._waiting if not job.future.done()]  # a client gone cancels its future
        return sum(job.n for job in self._waiting)

    def _take_batch(self) -> list[Job]:
        """The oldest waiting job and, in arrival order, the others of its group that fit beside it."""
        group = self.group_of(self._waiting[0].model)
        batch: list[Job] = []
        rows = 0
        for job in self._waiting:
            if self.group_of(job.model) != group:
                continue
            if batch and rows + job.n > self.max_batch_size:
                break
            batch.append(job)
            rows += job.n
        taken = set(map(id, batch))
        self._waiting = [job for job in self._waiting if id(job) not in taken]
        return batch

    def _generate_served(self, batch: list[Job]) -> tuple[list[Job], list[Completion]]:
        """In the generate thread: the jobs whose model is still served, and their replies. An
        unload queued before this batch ran has taken its model away: those jobs are left out."""
        live = [job for job in batch if self.serves(job.model)]
        if not live:
            return live, []
        names = [job.model for job in live for _ in range(job.n)]
        conversations = [job.conversation for job in live for _ in range(job.n)]
        options = [o for job in live for o in job.row_options()]
        return live, self.generate(names, conversations, options)

    async def _run(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            live, replies = await loop.run_in_executor(self._executor, self._generate_served, batch)
        except Exception as err:
            log.exception("generate failed for a batch of %d request(s)", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        finally:
            self.busy_s += time.perf_counter() - started
        for job in batch:
            if job not in live and not job.future.done():
                job.future.set_exception(ModelGone(job.model))
        if not live:
            return
        self.batches += 1
        self.requests += len(live)
        self.rows += len(replies)
        start = 0
        for job in live:
            if not job.future.done():
                job.future.set_result(replies[start : start + job.n])
            start += job.n
