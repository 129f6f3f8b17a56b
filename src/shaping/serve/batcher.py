"""Gathers concurrent requests into shared generate() calls, run off the event loop.

One consumer task takes the first waiting request, waits `window_s` for others to arrive (or
none, when the queue already holds a full batch), then groups what it has by model and sampling
options and runs each group through generate() in a single worker thread, `max_batch_size` rows
at a time (a request with n choices is n rows). While a batch runs, new requests queue up, so
under load the next batch is fuller. A sampled request with a seed runs alone: batched rows
share one random stream, so its reply would depend on its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shaping.inference.hf import Completion
from shaping.serve.models import SamplingOptions

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
GenerateFn = Callable[[str, list[Conversation], SamplingOptions], list[Completion]]


@dataclass(eq=False)
class Job:
    model: str
    conversation: Conversation
    n: int
    options: SamplingOptions
    future: asyncio.Future[list[Completion]] = field(repr=False)

    @property
    def key(self) -> tuple[Any, ...]:
        solo = self.options.seed is not None and self.options.temperature > 0
        return (self.model, self.options, id(self) if solo else None)


class Batcher:
    def __init__(self, generate: GenerateFn, max_batch_size: int, window_s: float) -> None:
        self.generate = generate
        self.max_batch_size = max(1, max_batch_size)
        self.window_s = window_s
        self.batches = 0  # generate() calls made
        self.requests = 0  # requests answered through them
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    async def submit(
        self, model: str, conversation: Conversation, n: int, options: SamplingOptions
    ) -> list[Completion]:
        """The `n` replies to `conversation`, once a batch holding it has run."""
        future: asyncio.Future[list[Completion]] = asyncio.get_running_loop().create_future()
        await self._queue.put(Job(model, conversation, n, options, future))
        return await future

    async def run(self) -> None:
        """Serve the queue until cancelled."""
        while True:
            jobs = [await self._queue.get()]
            self._take_waiting(jobs)
            if sum(j.n for j in jobs) < self.max_batch_size and self.window_s > 0:
                await asyncio.sleep(self.window_s)
                self._take_waiting(jobs)
            groups: dict[tuple[Any, ...], list[Job]] = defaultdict(list)
            for job in jobs:
                if not job.future.done():  # a client that went away cancels its future
                    groups[job.key].append(job)
            for group in groups.values():
                for chunk in self._chunks(group):
                    await self._run(chunk)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _take_waiting(self, jobs: list[Job]) -> None:
        while sum(j.n for j in jobs) < self.max_batch_size and not self._queue.empty():
            jobs.append(self._queue.get_nowait())

    def _chunks(self, group: list[Job]) -> list[list[Job]]:
        chunks: list[list[Job]] = [[]]
        for job in group:
            if chunks[-1] and sum(j.n for j in chunks[-1]) + job.n > self.max_batch_size:
                chunks.append([])
            chunks[-1].append(job)
        return chunks

    async def _run(self, chunk: list[Job]) -> None:
        head = chunk[0]
        conversations = [job.conversation for job in chunk for _ in range(job.n)]
        loop = asyncio.get_running_loop()
        try:
            replies = await loop.run_in_executor(self._executor, self.generate, head.model, conversations, head.options)
        except Exception as err:
            log.exception("generate failed for a batch of %d request(s)", len(chunk))
            for job in chunk:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        self.batches += 1
        self.requests += len(chunk)
        start = 0
        for job in chunk:
            if not job.future.done():
                job.future.set_result(replies[start : start + job.n])
            start += job.n
