"""`Pipeline`: subclass it, declare deps, write `run()` and generator tasks; `execute()` writes output.

Tasks are generators that `yield model_request(...)` (or a list of them) and receive the
response (or the list, in submission order). `run_task` drives every record's generator in
lockstep rounds: each round gathers the pending requests of all records, sends them to each
model's backend in batches, and resumes the generators with their answers.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import orjson
from tqdm import tqdm

from shaping.config import Config, compose, find_repo_root
from shaping.inference import ChatRequest, ChatResponse, ModelRegistry
from shaping.io import write_json, write_jsonl
from shaping.pipeline.api import FileDep, ModelDep, ModelRequest, ModelResponse, PipelineError, TrainingSample
from shaping.pipeline.cache import ResponseCache, request_key
from shaping.tracking import git_commit, hash_inputs

log = logging.getLogger(__name__)

Task = Callable[[dict[str, Any]], Any]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Record:
    index: int
    data: dict[str, Any]
    gen: Generator[Any, Any, Any]
    started_at: str = field(default_factory=_now)
    steps: list[dict[str, Any]] = field(default_factory=list)
    pending: list[ModelRequest] = field(default_factory=list)
    seen: Counter[bytes] = field(default_factory=Counter)  # identical requests so far: their sample index
    pending_is_list: bool = False


def _sample_index(record: _Record, request: ModelRequest) -> int:
    """0 for a request's first occurrence in a record, 1 for the same request again, ..."""
    content = orjson.dumps([request.model, request.messages, request.options], option=orjson.OPT_SORT_KEYS)
    index = record.seen[content]
    record.seen[content] += 1
    return index


@dataclass
class ExecuteResult:
    samples: int
    errors: int
    output: Path
    manifest: dict[str, Any]


class Pipeline:
    name: ClassVar[str] = ""
    annotated: ClassVar[bool] = True

    @staticmethod
    def model_dep(name: str) -> ModelDep:
        return ModelDep(name)

    @staticmethod
    def file_dep(path: str) -> FileDep:
        return FileDep(path)

    def __init__(
        self,
        config: Config | None = None,
        *,
        output_dir: str | Path | None = None,
        limit: int | None = None,
        annotate: bool | None = None,
    ) -> None:
        self.root = find_repo_root()
        self.config = config if config is not None else compose()
        self.limit = limit if limit is not None else self.config.synth.limit
        chosen = annotate if annotate is not None else self.config.synth.annotate
        self.annotate = type(self).annotated if chosen is None else chosen
        self.output_dir = Path(output_dir) if output_dir else self.root / "outputs" / "synth" / self.name
        self.registry = ModelRegistry(self.config.models, seed=self.config.seed, root=self.root)
        for dep in self.file_deps().values():
            dep.root = self.root
        self.errors: list[dict[str, Any]] = []
        self.requests_sent = 0
        self.cache_hits = 0
        self.records_in = 0
        synth = self.config.synth
        self.cache: ResponseCache | None = None
        if synth.cache_dir:
            self.cache = ResponseCache(
                self.root / synth.cache_dir / f"{self.name or type(self).__name__}.sqlite", synth.cache
            )

    # dependencies --------------------------------------------------------------------------
    @classmethod
    def model_deps(cls) -> dict[str, ModelDep]:
        return {k: v for k, v in vars_all(cls).items() if isinstance(v, ModelDep)}

    @classmethod
    def file_deps(cls) -> dict[str, FileDep]:
        return {k: v for k, v in vars_all(cls).items() if isinstance(v, FileDep)}

    # what subclasses write -----------------------------------------------------------------
    def run(self) -> list[TrainingSample]:
        raise NotImplementedError(f"{type(self).__name__}.run() must return the pipeline's samples")

    # calls ---------------------------------------------------------------------------------
    def query(self, model: ModelDep | str, messages: list[dict[str, str]], **options: Any) -> ModelResponse:
        """One blocking model call (setup and extraction steps)."""
        request = ModelRequest(
            messages=[dict(m) for m in messages],
            model=model.name if isinstance(model, ModelDep) else model,
            options=options,
        )
        return self._send([request], [0])[0]

    def _prepare(self, request: ModelRequest) -> ChatRequest:
        messages = request.messages
        system = self.registry.system_prompt(request.model)
        if system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        return ChatRequest(messages=messages, options=request.options)

    def _send(self, requests: Sequence[ModelRequest], sample_indices: Sequence[int]) -> list[ModelResponse]:
        """Answer each request: from the response cache, else from its model's backend (each
        answer is cached as it arrives). `sample_indices` tell identical requests of one record apart."""
        by_model: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            by_model[request.model].append(i)
        out: list[ModelResponse | None] = [None] * len(requests)
        for model, indices in by_model.items():
            prepared = {i: self._prepare(requests[i]) for i in indices}
            keys: dict[int, str] = {}
            if self.cache is not None:
                model_id, defaults = self.registry.model_id(model), self.registry.defaults(model)
                for i in indices:
                    options = {**defaults, **prepared[i].options}
                    keys[i] = request_key(model_id, prepared[i].messages, options, sample_indices[i])
                    hit = self.cache.get(keys[i])
                    if hit is not None:
                        out[i] = ModelResponse(model=model, response=hit, messages=prepared[i].messages)
                        self.cache_hits += 1
            missing = [i for i in indices if out[i] is None]
            if not missing:
                continue
            # identical requests (same key) are sent once and share the answer, as the cache would
            unique: dict[str | int, list[int]] = defaultdict(list)
            for i in missing:
                unique[keys.get(i, i)].append(i)
            sent = [group[0] for group in unique.values()]
            replies = self.registry.backend(model).generate(
                [prepared[i] for i in sent], partial(self._store, [keys.get(i) for i in sent])
            )
            self.requests_sent += len(sent)
            for group, reply in zip(unique.values(), replies, strict=True):
                for i in group:
                    out[i] = ModelResponse(model=model, response=reply, messages=prepared[i].messages)
        return [r for r in out if r is not None]

    def _store(self, keys: list[str | None], position: int, reply: ChatResponse) -> None:
        key = keys[position]
        if self.cache is not None and key is not None:
            self.cache.put(key, reply)

    def run_task(self, method: Task, records: Sequence[dict[str, Any]]) -> list[TrainingSample]:
        """Run generator `method` once per record, all records together; errors become records."""
        chosen = list(records[: self.limit] if self.limit is not None else records)
        self.records_in += len(chosen)
        results: dict[int, TrainingSample] = {}
        active: list[_Record] = []
        bar = tqdm(total=len(chosen), desc=f"{self.name}:{method.__name__}", unit="rec", mininterval=1.0)
        for index, data in enumerate(chosen):
            outcome = method(data)
            if not isinstance(outcome, Generator):
                raise PipelineError(
                    f"{method.__name__} must be a generator (use `yield model_request(...)`)",
                    error_type="not_a_generator",
                )
            record = _Record(index=index, data=data, gen=outcome)
            if self._advance(record, None, results):
                active.append(record)
            else:
                bar.update(1)
        while active:
            flat = [(record, request) for record in active for request in record.pending]
            responses = self._send([request for _, request in flat], [_sample_index(r, q) for r, q in flat])
            answers: dict[int, list[ModelResponse]] = defaultdict(list)
            for (record, request), response in zip(flat, responses, strict=True):
                record.steps.append(
                    {
                        "model": request.model,
                        "messages": response.messages,
                        "options": request.options,
                        "response": response.response.text,
                        "error": response.response.error,
                        "finish_reason": response.response.finish_reason,
                        "cached": response.response.cached,
                    }
                )
                answers[record.index].append(response)
            still: list[_Record] = []
            for record in active:
                got = answers[record.index]
                if self._advance(record, got if record.pending_is_list else got[0], results):
                    still.append(record)
                else:
                    bar.update(1)
            active = still
            bar.set_postfix(done=len(results), failed=len(self.errors))
        bar.close()
        return [results[i] for i in sorted(results)]

    def _advance(self, record: _Record, value: Any, results: dict[int, TrainingSample]) -> bool:
        """Resume a task; True while it still waits on requests."""
        try:
            yielded = record.gen.send(value)
        except StopIteration as stop:
            if not isinstance(stop.value, TrainingSample):
                self._fail(
                    record,
                    "unexpected_error",
                    f"task returned {type(stop.value).__name__}, expected a TrainingSample",
                )
                return False
            sample = stop.value
            sample.input_data, sample.steps = record.data, record.steps
            sample.started_at, sample.completed_at = record.started_at, _now()
            results[record.index] = sample
            return False
        except PipelineError as err:
            self._fail(record, err.error_type, err.message)
            return False
        except Exception as err:  # a bug in the task: keep the record and its steps to debug it
            self._fail(record, "unexpected_error", f"{type(err).__name__}: {err}", traceback.format_exc(limit=5))
            return False
        record.pending_is_list = isinstance(yielded, list)
        pending = yielded if isinstance(yielded, list) else [yielded]
        if not pending or not all(isinstance(r, ModelRequest) for r in pending):
            self._fail(record, "unexpected_error", "a task may only yield model_request(...) or a list of them")
            return False
        record.pending = pending
        return True

    def _fail(self, record: _Record, error_type: str, message: str, trace: str | None = None) -> None:
        error: dict[str, Any] = {
            "error": error_type,
            "message": message,
            "input_data": record.data,
            "steps": record.steps,
            "pipeline_commit": git_commit(self.root),
            "failed_at": _now(),
        }
        if trace:
            error["traceback"] = trace
        self.errors.append({"__ERROR__": error})

    # output --------------------------------------------------------------------------------
    def execute(self) -> ExecuteResult:
        """Run the pipeline; write samples.jsonl, errors.jsonl and manifest.json to the output folder."""
        started = _now()
        try:
            samples = self.run()
        finally:
            if self.cache is not None:
                self.cache.close()
        commit = git_commit(self.root)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(self.output_dir / "samples.jsonl", (s.to_dict(self.annotate, commit) for s in samples))
        write_jsonl(self.output_dir / "errors.jsonl", self.errors)
        by_type = Counter(e["__ERROR__"]["error"] for e in self.errors)
        manifest = {
            "pipeline": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "file_deps": {k: self._relative(hash_inputs([d.resolve()])) for k, d in self.file_deps().items()},
            "model_deps": {k: self._model_fingerprint(d.name) for k, d in self.model_deps().items()},
            "records": self.records_in,
            "samples": len(samples),
            "errors": len(self.errors),
            "errors_by_type": dict(by_type),
            "requests_sent": self.requests_sent,
            "cache_hits": self.cache_hits,
            "limit": self.limit,
            "partial": self.limit is not None,
            "annotated": self.annotate,
            "pipeline_commit": commit,
            "started_at": started,
            "completed_at": _now(),
        }
        write_json(self.output_dir / "manifest.json", manifest)
        log.info(
            "%s: %d samples, %d errors %s; %d requests sent, %d answered from the cache",
            self.name,
            len(samples),
            len(self.errors),
            dict(by_type) or "",
            self.requests_sent,
            self.cache_hits,
        )
        return ExecuteResult(samples=len(samples), errors=len(self.errors), output=self.output_dir, manifest=manifest)

    def _relative(self, hashes: dict[str, str]) -> dict[str, str]:
        return {Path(p).resolve().relative_to(self.root).as_posix(): h for p, h in hashes.items()}

    def _model_fingerprint(self, name: str) -> dict[str, Any]:
        spec = self.registry.spec(name)
        return {
            "backend": spec.backend,
            "model": spec.model,
            "sysprompt_file": spec.sysprompt_file,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_new_tokens": spec.max_new_tokens,
        }


def vars_all(cls: type) -> dict[str, Any]:
    """Class attributes including inherited ones (subclass wins)."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass))
    return merged
