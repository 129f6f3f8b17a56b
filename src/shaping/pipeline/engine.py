"""The engine that drives a pipeline's generator tasks on one asyncio event loop.

Every record's generator runs as its own coroutine, so a record's second request goes out as
soon as its first answer is back, whatever the other records are doing; how many requests are
in flight is each model's backend's business (`max_concurrency` per model: a semaphore for
`openai`, the batch size for `hf`/`vllm`). A fixed pool of record workers (a few times the
total concurrency) takes records in input order, so every backend stays busy without a
coroutine per input record being alive at once.

Per request: the system prompt is injected; a sampling backend's random stream for it is seeded
from the model's name, the messages, options and sample index, so its reply depends on nothing
else; the request is keyed (model id, messages, options, sample index) and answered from the
response cache or from an identical request already in flight, else sent. Finished records go
to the journal once per loop turn (one write for the burst); answers go to the cache in one
transaction every COMMIT_INTERVAL_S (a commit costs about a millisecond on a VM disk, which at
thousands of answers per second was a third of the engine's time), so a SIGKILL loses at most
that long's answers, re-sent on the re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from tqdm import tqdm

from shaping.errors import ShapingError
from shaping.inference import ChatRequest, ChatResponse, ModelRegistry
from shaping.inference.cache import ResponseCache, payload_of, request_body, request_key_from_payload
from shaping.inference.types import AsyncChatBackend
from shaping.pipeline.api import ModelRequest, ModelResponse, PipelineError, TrainingSample
from shaping.pipeline.journal import Journal

log = logging.getLogger(__name__)

Task = Callable[[dict[str, Any]], Any]
TICK_S = 1.0  # progress refresh (and journal fsync) interval
COMMIT_INTERVAL_S = 0.2  # the response cache's commits: at most this often, and this late
GC_THRESHOLD = 20_000  # allocations between young-generation collections during a run (Python's default: 700)
LOG_EVERY_S = 30.0  # progress as a log line when stderr is not a terminal
# record workers per request slot: enough to fill every slot, few enough that records do not
# queue at a model's semaphore (each wait costs a future and a wake-up)
WORKERS_PER_SLOT = 1.0


_clock: list[Any] = [0, ""]  # the current second and its ISO text: every record is stamped twice


def now() -> str:
    second = int(time.time())
    if second != _clock[0]:
        _clock[:] = [second, datetime.fromtimestamp(second, UTC).isoformat()]
    return str(_clock[1])


def record_key(task: str, index: int, data: Any) -> str:
    """What identifies one record of one task in the journal. `task` is the step's label (see
    `Engine.run_task`): a task run twice over the same records is two steps, journaled apart."""
    payload = orjson.dumps([task, index, data], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def sample_from_row(row: dict[str, Any]) -> TrainingSample:
    return TrainingSample(
        id=row["id"],
        messages=row["messages"],
        rejected=row.get("rejected"),
        input_data=row.get("input_data"),
        steps=row.get("steps") or [],
        started_at=row.get("started_at"),
        completed_at=row.get("completed_at"),
    )


@dataclass
class Stats:
    records: int = 0  # given to run_task
    done: int = 0
    failed: int = 0
    resumed: int = 0  # finished in an interrupted run, taken from the journal
    requests: int = 0  # made by tasks and query()
    sent: int = 0
    cache_hits: int = 0
    shared: int = 0  # identical to a request in flight: answered by it
    failed_requests: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)


@dataclass
class _Model:
    backend: AsyncChatBackend
    system: str | None
    model_id: str
    defaults: dict[str, Any]


class _Record:
    __slots__ = ("data", "index", "seen", "started_at", "steps")

    def __init__(self, index: int, data: Any) -> None:
        self.index = index
        self.data = data
        self.started_at = now()
        self.steps: list[dict[str, Any]] = []
        self.seen: dict[bytes, int] = {}  # identical requests so far in this record: their sample index


class Engine:
    def __init__(
        self,
        registry: ModelRegistry,
        cache: ResponseCache | None,
        commit: str | None,
        label: str = "",
        models: Sequence[str] = (),
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.commit = commit
        self.label = label
        self.journal: Journal | None = None
        self.stats = Stats()
        self.errors: list[dict[str, Any]] = []
        self._models: dict[str, _Model] = {}
        # requests in flight by key, with the identical requests waiting on each (a future made
        # only for such a waiter: most requests have none)
        self._inflight: dict[str, list[asyncio.Future[ChatResponse]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._commit_timer: asyncio.TimerHandle | None = None
        self._bar: tqdm[Any] | None = None
        self._task_name = ""
        self._task_runs: dict[str, int] = {}  # run_task calls so far per task name
        # request slots of the models the pipeline declares (every model in the registry if none)
        used = [registry.specs[m] for m in models if m in registry.specs] or list(registry.specs.values())
        self.workers = max(8, round(WORKERS_PER_SLOT * sum(max(1, spec.max_concurrency) for spec in used)))

    # the two ways in -------------------------------------------------------------------------
    def query(self, request: ModelRequest) -> ModelResponse:
        """One request, answered before returning (run()'s setup steps)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ShapingError("query() blocks, so it belongs in run(); inside a task, `yield model_request(...)`")

        async def one() -> ModelResponse:
            self._loop = asyncio.get_running_loop()
            try:
                return await self._answer(_Record(-1, None), request, 0)
            finally:
                await self._end_loop()

        return asyncio.run(one())

    def run_task(self, method: Task, records: Sequence[Any], limit: int | None) -> list[TrainingSample]:
        """Run generator `method` once per record, all records concurrently; samples in input order."""
        if not inspect.isgeneratorfunction(getattr(method, "__func__", method)):
            raise ShapingError(
                f"run_task({getattr(method, '__name__', method)!r}): a task must be a generator "
                "(a method that does `response = yield model_request(...)`)"
            )
        chosen = list(records[:limit] if limit is not None else records)
        # The same task may run again over the same records (a second pass with other settings, a
        # refinement round): the journal must tell the runs apart, or a resumed second run takes the
        # first's samples. The n-th run is `task#n` (the first keeps the bare name), which holds as
        # long as run() makes its calls in the same order, as a re-run of the same file does.
        runs = self._task_runs[method.__name__] = self._task_runs.get(method.__name__, 0) + 1
        task = method.__name__ if runs == 1 else f"{method.__name__}#{runs}"
        keys = [record_key(task, i, data) for i, data in enumerate(chosen)]
        results: dict[int, TrainingSample] = {}
        todo: list[int] = []
        finished = self.journal.finished if self.journal is not None else {}
        for index, key in enumerate(keys):
            row = finished.get(key)
            if row is not None:
                results[index] = sample_from_row(row)
            else:
                todo.append(index)
        resumed = len(chosen) - len(todo)
        self.stats.records += len(chosen)
        self.stats.resumed += resumed
        self.stats.done += resumed
        if resumed:
            log.info("%s: %d of %d records finished in an interrupted run (journal)", task, resumed, len(chosen))
        self._task_name = task
        self._bar = tqdm(
            total=len(chosen), initial=resumed, desc=f"{self.label}:{task}", unit="rec", disable=None, mininterval=0.5
        )
        try:
            if todo:
                with _fewer_collections():
                    asyncio.run(self._run_records(method, chosen, keys, todo, results))
        finally:
            self._refresh_bar()
            self._bar.close()
            self._bar = None
        return [results[i] for i in sorted(results)]

    # driving records ---------------------------------------------------------------------------
    async def _run_records(
        self, method: Task, chosen: list[Any], keys: list[str], todo: list[int], results: dict[int, TrainingSample]
    ) -> None:
        loop = self._loop = asyncio.get_running_loop()
        queue = iter(todo)

        async def worker() -> None:
            for index in queue:
                await self._drive(method, index, chosen[index], keys[index], results)

        ticker = _Ticker(self)
        ticker.start(loop)
        workers = [loop.create_task(worker()) for _ in range(min(self.workers, len(todo)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for each in workers:
                each.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            await ticker.stop()
            await self._end_loop()

    async def _drive(self, method: Task, index: int, data: Any, key: str, results: dict[int, TrainingSample]) -> None:
        record = _Record(index, data)
        generator = method(data)
        value: Any = None
        position = 0  # requests made so far: orders this record's requests in a batch
        while True:
            try:
                yielded = generator.send(value)
            except StopIteration as stop:
                self._finish(record, key, stop.value, results)
                return
            except PipelineError as err:
                self._fail(record, err.error_type, err.message)
                return
            except Exception as err:  # a bug in the task: keep the record and its steps to debug it
                self._fail(record, "unexpected_error", f"{type(err).__name__}: {err}", traceback.format_exc(limit=5))
                return
            if isinstance(yielded, ModelRequest):
                value = await self._answer(record, yielded, position)
                position += 1
            elif isinstance(yielded, list) and yielded and all(isinstance(r, ModelRequest) for r in yielded):
                value = list(
                    await asyncio.gather(*(self._answer(record, r, position + i) for i, r in enumerate(yielded)))
                )
                position += len(yielded)
            else:
                generator.close()
                self._fail(
                    record,
                    "unexpected_error",
                    "a task may only yield model_request(...) or a non-empty list of them, "
                    f"not {type(yielded).__name__}",
                )
                return

    async def _answer(self, record: _Record, request: ModelRequest, position: int) -> ModelResponse:
        model = self._models.get(request.model) or self._resolve(request.model)
        messages = request.messages
        if model.system is not None and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": model.system}, *messages]
        self.stats.requests += 1
        # the step is reserved now, so a list's steps stay in submission order whatever answers first
        step: dict[str, Any] = {"model": request.model, "messages": messages, "options": request.options}
        record.steps.append(step)
        response: ChatResponse | None = None
        options = {**model.defaults, **request.options} if request.options else model.defaults
        # what seeds the request's sampling: the model's registry name, messages, options and sample
        # index, so a rebuild samples the same reply (the cache's model id also holds the weights' mtimes)
        body = request_body(messages, options)  # serialized once for both keys
        payload = payload_of(request.model, body)
        sample_index = record.seen.get(payload, 0)
        record.seen[payload] = sample_index + 1
        seed_key = request_key_from_payload(payload, sample_index)
        key: str | None = None
        if self.cache is not None:
            key = request_key_from_payload(payload_of(model.model_id, body), sample_index)
            waiting = self._inflight.get(key)
            if waiting is not None:
                self.stats.shared += 1
                future = asyncio.get_running_loop().create_future()
                waiting.append(future)
                response = await future
            else:
                response = self.cache.get(key)
                if response is not None:
                    self.stats.cache_hits += 1
        if response is None:
            chat = ChatRequest(messages, request.options, key=seed_key)
            response = await self._send(model, key, chat, (record.index, position))
        step.update(
            response=response.text,
            error=response.error,
            finish_reason=response.finish_reason,
            cached=response.cached,
        )
        return ModelResponse(model=request.model, response=response, messages=messages)

    async def _send(self, model: _Model, key: str | None, request: ChatRequest, order: tuple[int, int]) -> ChatResponse:
        if key is not None:
            self._inflight[key] = []
        try:
            response = await model.backend.complete(request, order)
        except BaseException as err:
            for future in self._inflight.pop(key, []) if key is not None else []:
                if future.done():
                    continue
                if isinstance(err, Exception):  # identical requests waiting on this one fail with it
                    future.set_exception(err)
                else:
                    future.cancel()
            raise
        self.stats.sent += 1
        if not response.is_success:
            self.stats.failed_requests += 1
        if key is not None:
            for future in self._inflight.pop(key):
                if not future.done():
                    future.set_result(response)
            if self.cache is not None and response.is_success:
                self.cache.put(key, response)
                if self._commit_timer is None and self._loop is not None:
                    self._commit_timer = self._loop.call_later(COMMIT_INTERVAL_S, self._commit)
        return response

    def _resolve(self, name: str) -> _Model:
        registry = self.registry
        model = _Model(
            backend=registry.async_backend(name),
            system=registry.system_prompt(name),
            model_id=registry.model_id(name),
            defaults=registry.defaults(name),
        )
        self._models[name] = model
        return model

    # outcomes ----------------------------------------------------------------------------------
    def _finish(self, record: _Record, key: str, value: Any, results: dict[int, TrainingSample]) -> None:
        if not isinstance(value, TrainingSample):
            self._fail(record, "unexpected_error", f"task returned {type(value).__name__}, expected a TrainingSample")
            return
        value.input_data, value.steps = record.data, record.steps
        value.started_at, value.completed_at = record.started_at, now()
        results[record.index] = value
        self.stats.done += 1
        if self._bar is not None:
            self._bar.update(1)
        if self.journal is not None:
            self.journal.append(key, self._task_name, record.index, value.to_dict(True, self.commit))
            self._schedule_flush()

    def _fail(self, record: _Record, error_type: str, message: str, trace: str | None = None) -> None:
        error: dict[str, Any] = {
            "error": error_type,
            "message": message,
            "input_data": record.data,
            "steps": record.steps,
            "pipeline_commit": self.commit,
            "failed_at": now(),
        }
        if trace:
            error["traceback"] = trace
        self.errors.append({"__ERROR__": error})
        self.stats.failed += 1
        self.stats.errors_by_type[error_type] = self.stats.errors_by_type.get(error_type, 0) + 1
        if self._bar is not None:
            self._bar.update(1)

    # the journal once per loop turn, the cache every COMMIT_INTERVAL_S, both at the end ---------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_journal)

    def _flush_journal(self) -> None:
        self._flush_scheduled = False
        if self.journal is not None:
            self.journal.flush()

    def _commit(self) -> None:
        self._commit_timer = None
        if self.cache is not None:
            self.cache.commit()

    def flush(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        self._commit()
        self._flush_journal()

    async def _end_loop(self) -> None:
        self.flush()
        for model in self._models.values():
            await model.backend.aclose()
        self._loop = None

    def _refresh_bar(self) -> None:
        if self._bar is None:
            return
        stats = self.stats
        self._bar.set_postfix(
            done=stats.done,
            failed=stats.failed,
            cached=stats.cache_hits + stats.shared,
            sent=stats.sent,
            refresh=False,
        )


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """A run allocates a few objects per request and keeps many (steps, samples): at the default
    thresholds the cyclic collector ran often and rescanned the growing heap, about a tenth of
    the engine's time. Objects from before the run are frozen out of its scans."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


class _Ticker:
    """Once a second: requests/s on the progress bar (or a log line every 30 s without a
    terminal), and the journal synced to disk in a worker thread (an fsync took ~5 ms here,
    too long to hold the event loop)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.handle: asyncio.TimerHandle | None = None
        self.syncing: asyncio.Future[None] | None = None
        self.last_sent = engine.stats.sent
        self.last_time = self.started = self.last_log = time.monotonic()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.handle = loop.call_later(TICK_S, self.tick, loop)

    async def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.syncing is not None:  # the journal is closed next: let its fsync finish first
            await asyncio.gather(self.syncing, return_exceptions=True)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        engine, stats = self.engine, self.engine.stats
        clock = time.monotonic()
        rate = (stats.sent - self.last_sent) / max(clock - self.last_time, 1e-9)
        self.last_sent, self.last_time = stats.sent, clock
        bar = engine._bar
        if bar is not None and not bar.disable:
            bar.set_postfix(
                done=stats.done,
                failed=stats.failed,
                cached=stats.cache_hits + stats.shared,
                sent=stats.sent,
                req_s=f"{rate:.0f}",
            )
        elif clock - self.last_log >= LOG_EVERY_S:
            self.last_log = clock
            log.info(
                "%s: %d/%d records done, %d failed, %d requests answered from the cache, %d sent (%.0f/s)",
                engine.label,
                stats.done,
                stats.records,
                stats.failed,
                stats.cache_hits + stats.shared,
                stats.sent,
                rate,
            )
        if engine.journal is not None and (self.syncing is None or self.syncing.done()):
            self.syncing = loop.run_in_executor(None, engine.journal.sync)
        self.handle = loop.call_later(TICK_S, self.tick, loop)
