"""Runs the server's requests through the generation Engine in one worker thread.

Requests (a request with n choices is n rows) go to the worker through a queue and wait in the
Engine's; the Engine admits them into the running batch as rows leave it (iteration-level
batching: at most `max_batch_size` rows, and `max_tokens` tokens of prompt plus reply, at a
time), so a short reply never waits for a long one and a client's next request joins a batch
already running. An idle server that gets its first rows waits up to `window_s` for more
(fewer than `max_batch_size // 8` waiting), so a burst is prefilled together.

Rows in one batch may differ in everything per-row: model (the base and any LoRA adapter of it;
`ServedModels.batch_group` says which can share a batch), temperature, top-p, top-k, seed, max
tokens and stop strings. A seeded row samples from a generator of its own, so a greedy or seeded
reply is the one the request gets alone, whatever shares its batch. A streamed request gets its
text as its tokens are made (`on_text`).

`call` runs other work on the model (loading or unloading an adapter) in the worker thread once
the running batch has ended (no row is admitted meanwhile); a request whose model is gone by then
fails alone with ModelGone. A model the Engine cannot run (no DynamicCache) is served in whole
batches through `generate()`, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from shaping.inference.engine import Engine, Row
from shaping.inference.hf import Completion
from shaping.inference.types import request_seed
from shaping.serve.models import SamplingOptions, ServedModels

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
T = TypeVar("T")


class ModelGone(Exception):
    """The request's model was unloaded while the request waited."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


@dataclass(eq=False)
class Job:
    """One request: its n rows' replies, and, streamed, each choice's text as it is made."""

    model: str
    conversation: Conversation
    n: int
    options: SamplingOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Completion]] = field(repr=False)
    on_text: Callable[[int, str], None] | None = None  # (choice, piece), in the event loop
    min_tokens: int = 0
    prompt_ids: list[int] | None = None
    replies: dict[int, Completion] = field(default_factory=dict)

    def row_options(self) -> list[SamplingOptions]:
        """The n choices' options: with a seed and n > 1, each choice its own stream derived from it."""
        if self.n == 1 or self.options.seed is None:
            return [self.options] * self.n
        return [replace(self.options, seed=request_seed(self.options.seed, str(j))) for j in range(self.n)]

    def alive(self) -> bool:
        return not self.future.done()  # a client gone cancels its future

    def fail(self, err: BaseException) -> None:
        self.loop.call_soon_threadsafe(_fail, self.future, err)

    def add(self, choice: int, reply: Completion) -> bool:
        """Keep a choice's reply; whether the job has all of them now."""
        self.replies[choice] = reply
        return len(self.replies) == self.n

    def resolve(self) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, [self.replies[j] for j in range(self.n)])


@dataclass(eq=False)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class Stepper(Protocol):
    """What the worker drives: the Engine, or WholeBatches for a model it cannot run."""

    waiting: Any
    running: list[Row]
    admitting: bool

    @property
    def idle(self) -> bool: ...

    def add(self, row: Row) -> None: ...

    def step(self) -> list[tuple[Row, Completion]]: ...


class WholeBatches:
    """A Stepper for models without a DynamicCache: the waiting rows of one group (up to
    max_rows) as one generate() call, which runs until its longest row ends."""

    def __init__(self, models: ServedModels, max_rows: int) -> None:
        self.models, self.max_rows = models, max_rows
        self.waiting: list[Row] = []
        self.running: list[Row] = []
        self.admitting = True

    @property
    def idle(self) -> bool:
        return not self.waiting

    def add(self, row: Row) -> None:
        self.waiting.append(row)

    def step(self) -> list[tuple[Row, Completion]]:
        self.waiting = [row for row in self.waiting if row.alive is None or row.alive()]
        if not self.waiting or not self.admitting:
            return []
        group = self.waiting[0].group
        batch = [row for row in self.waiting if row.group == group][: self.max_rows]
        self.waiting = [row for row in self.waiting if row not in batch]
        self.running = batch
        replies = self.models.generate_rows(
            [str(row.adapter) for row in batch], [row.tag[0].conversation for row in batch], [r.options for r in batch]
        )
        self.running = []
        for row, reply in zip(batch, replies, strict=True):
            if row.on_text is not None and reply.text:
                row.on_text(reply.text)
        return list(zip(batch, replies, strict=True))


class Batcher:
    def __init__(
        self,
        models: ServedModels,
        max_batch_size: int,
        window_s: float,
        max_tokens: int | None = None,
    ) -> None:
        self.models = models
        self.max_batch_size = max(1, max_batch_size)
        self.max_tokens = max_tokens
        self.window_s = window_s
        self.nearly_empty = max(1, self.max_batch_size // 8)
        self.requests = 0  # requests answered
        self.busy_s = 0.0  # time the worker spent generating
        self._inbox: queue.SimpleQueue[Job | _Call | None] = queue.SimpleQueue()
        self._calls: list[_Call] = []
        self._stepper: Stepper = self._new_stepper()
        self._engines: list[Stepper] = []  # those replaced after an adapter change, for the counts
        self._thread = threading.Thread(target=self._work, name="generate", daemon=True)
        self._thread.start()

    # ---- the event loop's side

    async def submit(
        self,
        model: str,
        conversation: Conversation,
        n: int,
        options: SamplingOptions,
        on_text: Callable[[int, str], None] | None = None,
        min_tokens: int = 0,
        prompt_ids: list[int] | None = None,
    ) -> list[Completion]:
        """The `n` replies to `conversation` (`prompt_ids`: its prompt's tokens, when the caller has
        them); with `on_text`, each choice's text as it is made; no end-of-turn token before
        `min_tokens` (a model served in whole batches ignores it)."""
        loop = asyncio.get_running_loop()
        job = Job(model, conversation, n, options, loop, loop.create_future(), on_text, min_tokens, prompt_ids)
        self._inbox.put(job)
        return await job.future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in the worker thread, once the running batch has ended (never during one)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._inbox.put(_Call(fn, args, loop, future))
        return await future

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def counts(self) -> dict[str, Any]:
        """For /health: requests answered, rows generated, prefills (`batches`: rows admitted
        together), decoding steps and the rows they held, seconds spent generating."""
        steppers = [*self._engines, self._stepper]
        stats = [s.stats for s in steppers if isinstance(s, Engine)]
        return {
            "requests": self.requests,
            "rows": sum(s.rows for s in stats),
            "batches": sum(s.prefills for s in stats),
            "steps": sum(s.forwards - s.prefills for s in stats),
            "row_steps": sum(s.row_steps for s in stats),
            "generate_s": round(self.busy_s, 3),
        }

    # ---- the worker thread

    def _new_stepper(self) -> Stepper:
        engine = self.models.engine(self.max_batch_size, self.max_tokens)
        return engine if engine is not None else WholeBatches(self.models, self.max_batch_size)

    def _work(self) -> None:
        while True:
            try:
                if not self._turn():
                    return
            except Exception as err:  # never leave the server without its worker: fail what it holds
                log.exception("the generation worker failed; the requests it held fail with it")
                with contextlib.suppress(Exception):
                    self._fail_all(err)

    def _turn(self) -> bool:
        """Take what arrived, run calls or one step; False once closed."""
        idle = self._stepper.idle and not self._calls
        items = self._drain(block=idle)
        if None in items:
            return False
        for item in items:
            assert item is not None
            self._take(item)
        if items and idle and not self._calls:
            self._gather_burst()
        if self._calls:
            self._stepper.admitting = False
            if not self._stepper.running:
                self._run_calls()
                return True
        if self._stepper.idle:
            return True
        started = time.perf_counter()
        try:
            finished = self._stepper.step()
        except Exception as err:  # the model itself failed: every row in the batch fails with it
            log.exception("generation failed for %d row(s)", len(self._stepper.running))
            self._fail_all(err)
            return True
        finally:
            self.busy_s += time.perf_counter() - started
        for row, reply in finished:
            job, choice = row.tag
            if job.add(choice, reply):
                self.requests += 1  # counted before the client can see its reply
                job.resolve()
        return True

    def _drain(self, block: bool) -> list[Job | _Call | None]:
        """What the queue holds (waiting for the first item when `block`); None: close."""
        items: list[Job | _Call | None] = []
        try:
            items.append(self._inbox.get() if block else self._inbox.get_nowait())
            while items[-1] is not None:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return items

    def _gather_burst(self) -> None:
        """An idle server's first rows: wait up to window_s for more while few wait."""
        deadline = time.monotonic() + self.window_s
        while len(self._stepper.waiting) < self.nearly_empty and (left := deadline - time.monotonic()) > 0:
            try:
                item = self._inbox.get(timeout=left)
            except queue.Empty:
                return
            if item is None:
                self._inbox.put(None)
                return
            self._take(item)

    def _take(self, item: Job | _Call) -> None:
        if isinstance(item, _Call):
            self._calls.append(item)
            return
        job = item
        if not self.models.serves(job.model):
            job.fail(ModelGone(job.model))
            return
        try:
            prompt_ids = job.prompt_ids or self.models.prompt_ids(job.conversation, worker=True)
        except Exception as err:  # the chat template refuses it: this request alone fails
            job.fail(err)
            return
        for choice, options in enumerate(job.row_options()):
            row = Row(
                prompt_ids,
                options,
                adapter=job.model,
                on_text=None if job.on_text is None else _streamer(job, choice),
                alive=job.alive,
                group=self.models.batch_group(job.model),
                min_new_tokens=job.min_tokens,
            )
            row.tag = (job, choice)
            self._stepper.add(row)

    def _run_calls(self) -> None:
        """The queued calls, between batches; then the rows waiting go on, but those whose model
        is gone fail."""
        calls, self._calls = self._calls, []
        for call in calls:
            try:
                result = call.fn(*call.args)
            except Exception as err:
                call.loop.call_soon_threadsafe(_fail, call.future, err)
            else:
                call.loop.call_soon_threadsafe(_resolve, call.future, result)
        waiting = list(self._stepper.waiting)
        self._engines.append(self._stepper)
        self._stepper = self._new_stepper()  # the model object may have changed (a first adapter wraps it)
        failed: set[int] = set()
        for row in waiting:
            job, _ = row.tag
            if not self.models.serves(job.model):
                if id(job) not in failed:
                    failed.add(id(job))
                    job.fail(ModelGone(job.model))
                continue
            self._stepper.add(row)

    def _fail_all(self, err: Exception) -> None:
        rows = [*self._stepper.running, *self._stepper.waiting]
        jobs = {id(row.tag[0]): row.tag[0] for row in rows}
        for job in jobs.values():
            job.fail(err)
        self._engines.append(self._stepper)
        self._stepper = self._new_stepper()


def _streamer(job: Job, choice: int) -> Callable[[str], None]:
    """A row's on_text: its pieces to the job's callback, in the event loop's thread."""
    stream, loop = job.on_text, job.loop
    assert stream is not None

    def on_text(piece: str) -> None:
        loop.call_soon_threadsafe(stream, choice, piece)

    return on_text


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
