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
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from shaping.config import Config, compose, find_repo_root
from shaping.inference import ChatRequest, ModelRegistry
from shaping.io import write_json, write_jsonl
from shaping.pipeline.api import FileDep, ModelDep, ModelRequest, ModelResponse, PipelineError, TrainingSample
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
    pending_is_list: bool = False


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
        self.records_in = 0

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
        return self._send([request])[0]

    def _prepare(self, request: ModelRequest) -> ChatRequest:
        messages = request.messages
        system = self.registry.system_prompt(request.model)
        if system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        return ChatRequest(messages=messages, options=request.options)

    def _send(self, requests: Sequence[ModelRequest]) -> list[ModelResponse]:
        by_model: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            by_model[request.model].append(i)
        out: list[ModelResponse | None] = [None] * len(requests)
        for model, indices in by_model.items():
            backend = self.registry.backend(model)
            prepared = [self._prepare(requests[i]) for i in indices]
            replies = backend.generate(prepared)
            self.requests_sent += len(indices)
            for i, sent, reply in zip(indices, prepared, replies, strict=True):
                out[i] = ModelResponse(model=model, response=reply, messages=sent.messages)
        return [r for r in out if r is not None]

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
            responses = self._send([request for _, request in flat])
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
        samples = self.run()
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
            "limit": self.limit,
            "partial": self.limit is not None,
            "annotated": self.annotate,
            "pipeline_commit": commit,
            "started_at": started,
            "completed_at": _now(),
        }
        write_json(self.output_dir / "manifest.json", manifest)
        log.info("%s: %d samples, %d errors %s", self.name, len(samples), len(self.errors), dict(by_type) or "")
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
