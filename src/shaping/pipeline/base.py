"""`Pipeline`: subclass it, declare deps, write `run()` and generator tasks; `execute()` writes output.

Tasks are generators that `yield model_request(...)` (or a list of them) and receive the
response (or the list, in submission order). `run_task` hands them to the engine
(`pipeline.engine`), which drives every record concurrently on one event loop.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import orjson

from shaping.config import Config, compose, find_repo_root
from shaping.errors import ShapingError
from shaping.inference import ModelRegistry
from shaping.inference.cache import ResponseCache
from shaping.inference.redact import redact
from shaping.io import atomic_write_text, write_json
from shaping.pipeline.api import FileDep, ModelDep, ModelRequest, ModelResponse, PipelineError, TrainingSample
from shaping.pipeline.engine import Engine, Task, now
from shaping.pipeline.journal import Journal
from shaping.tracking import git_commit, hash_inputs, sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")

# command-line flags, for `src/synthesize.py` and a pipeline file run as a script
FLAGS = {"--no-cache": "synth.cache=false"}


def cli_overrides(argv: Sequence[str]) -> list[str]:
    """Hydra overrides from a command line: `key=value` as given, flags (`--no-cache`) translated."""
    overrides = []
    for arg in argv:
        if arg.startswith("--"):
            if arg not in FLAGS:
                raise ShapingError(f"unknown option {arg}; options: {', '.join(FLAGS)}, or Hydra overrides key=value")
            overrides.append(FLAGS[arg])
        else:
            overrides.append(arg)
    return overrides


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
        if type(self).__module__ == "__main__":
            # `python pipelines/<file>.py key=value --no-cache`, from any folder: a pipeline run as a
            # script finds the repository above its file (else above the working folder), takes overrides
            self.root = _as_script(lambda: _script_root(self.source_file()))
            if config is None:
                config = _as_script(lambda: compose(cli_overrides(sys.argv[1:]), config_dir=self.root / "conf"))
        else:
            self.root = find_repo_root()
            if config is None:
                config = compose()
        self.config = config
        self.limit = limit if limit is not None else self.config.synth.limit
        chosen = annotate if annotate is not None else self.config.synth.annotate
        self.annotate = type(self).annotated if chosen is None else chosen
        label = self.name or type(self).__name__
        self.output_dir = Path(output_dir) if output_dir else self.root / "outputs" / "synth" / label
        self.registry = ModelRegistry(self.config.models, seed=self.config.seed, root=self.root)
        for dep in self.file_deps().values():
            dep.root = self.root
        synth = self.config.synth
        self.cache: ResponseCache | None = None
        if synth.cache_dir:
            self.cache = ResponseCache(self.root / synth.cache_dir / f"{label}.sqlite", synth.cache)
        self.commit = git_commit(self.root)
        models = [d.name for d in self.model_deps().values()]
        self.engine = Engine(self.registry, self.cache, self.commit, label, models)
        self.journal: Journal | None = None

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The `__ERROR__` records so far."""
        return self.engine.errors

    # dependencies --------------------------------------------------------------------------
    @classmethod
    def model_deps(cls) -> dict[str, ModelDep]:
        return {k: v for k, v in vars_all(cls).items() if isinstance(v, ModelDep)}

    @classmethod
    def file_deps(cls) -> dict[str, FileDep]:
        return {k: v for k, v in vars_all(cls).items() if isinstance(v, FileDep)}

    @classmethod
    def source_file(cls) -> Path | None:
        try:
            return Path(inspect.getfile(cls)).resolve()
        except (TypeError, OSError):
            return None

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
        return self.engine.query(request)

    def run_task(self, method: Task, records: Sequence[dict[str, Any]]) -> list[TrainingSample]:
        """Run generator `method` once per record, all records concurrently; errors become records
        (in `errors.jsonl`), samples come back in input order."""
        if self.journal is None:
            self.journal = Journal(self.journal_path(), resume=self.config.synth.cache)
            self.engine.journal = self.journal
        return self.engine.run_task(method, records, self.limit)

    # resume --------------------------------------------------------------------------------
    def journal_path(self) -> Path:
        """Beside the response cache (DVC deletes a stage's outputs before running it again)."""
        folder = self.root / self.config.synth.cache_dir if self.config.synth.cache_dir else self.output_dir
        return folder / f"{self.name or type(self).__name__}.{self.fingerprint()[:16]}.journal.jsonl"

    def fingerprint(self) -> str:
        """What a finished record depends on besides its input: the pipeline's file, its models
        and its input files, and the seed. A journal is only resumed under the same fingerprint."""
        source = self.source_file()
        parts = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "source": sha256_file(source) if source and source.is_file() else None,
            # the options unmasked: a secret-looking name (stop_token, prompt_cache_key) can change answers
            "models": {k: model_fingerprint(self.registry, d.name, mask=False) for k, d in self.model_deps().items()},
            "files": {k: hash_inputs([d.resolve()]) for k, d in self.file_deps().items()},
            "seed": self.config.seed,
        }
        return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()

    def model_fingerprint(self, name: str) -> dict[str, Any]:
        return model_fingerprint(self.registry, name)

    # output --------------------------------------------------------------------------------
    def execute(self) -> ExecuteResult:
        """Run the pipeline; write samples.jsonl, errors.jsonl and manifest.json to the output folder.

        Raises ShapingError (the stage exits 1 with its message) when run() stops on a
        PipelineError, on Ctrl-C, or when more than `synth.max_failure_rate` of the records
        failed (after writing the outputs, so errors.jsonl can be read)."""
        if type(self).__module__ == "__main__":
            return _as_script(self._execute)
        return self._execute()

    def _execute(self) -> ExecuteResult:
        started = now()
        try:
            samples = self.run()
        except PipelineError as err:
            raise ShapingError(f"{self.name}: run() stopped ({err.error_type}): {err.message}") from None
        except KeyboardInterrupt:
            where = f"; {self.journal.path} holds the finished records" if self.journal else ""
            raise ShapingError(f"{self.name}: interrupted{where}. Run again to resume") from None
        finally:
            self.close()
        if not isinstance(samples, list) or not all(isinstance(s, TrainingSample) for s in samples):
            raise ShapingError(
                f"{type(self).__name__}.run() returned {type(samples).__name__}; return the list run_task() gives"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_jsonl(self.output_dir / "samples.jsonl", (s.to_dict(self.annotate, self.commit) for s in samples))
        _write_jsonl(self.output_dir / "errors.jsonl", self.errors)
        manifest = self._manifest(samples, started)
        write_json(self.output_dir / "manifest.json", manifest)
        if self.journal is not None:
            self.journal.remove()  # the outputs hold everything now
        log.info("%s", summary(manifest))
        rate, threshold = manifest["failure_rate"], self.config.synth.max_failure_rate
        if rate > threshold:
            raise ShapingError(
                f"{self.name}: {manifest['errors']} of {manifest['records']} records failed ({rate:.0%}), more than "
                f"synth.max_failure_rate={threshold}: {manifest['errors_by_type']}; "
                f"see {self.output_dir / 'errors.jsonl'}"
            )
        return ExecuteResult(samples=len(samples), errors=len(self.errors), output=self.output_dir, manifest=manifest)

    def close(self) -> None:
        self.engine.flush()
        if self.cache is not None:
            self.cache.close()
        if self.journal is not None:
            self.journal.close()
        self.registry.close()

    def _manifest(self, samples: list[TrainingSample], started: str) -> dict[str, Any]:
        stats = self.engine.stats
        source = self.source_file()
        return {
            "pipeline": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "pipeline_file": self._relative_path(source) if source else None,
            "pipeline_sha256": sha256_file(source) if source and source.is_file() else None,
            "file_deps": {
                k: {"path": d.path, "files": self._relative(hash_inputs([d.resolve()]))}
                for k, d in self.file_deps().items()
            },
            "model_deps": {
                k: {"name": d.name, "fingerprint": self.model_fingerprint(d.name)} for k, d in self.model_deps().items()
            },
            "records": stats.records,
            "samples": len(samples),
            "errors": len(self.errors),
            "errors_by_type": dict(stats.errors_by_type),
            "failure_rate": round(stats.failed / stats.records, 4) if stats.records else 0.0,
            "resumed": stats.resumed,
            "requests": stats.requests,
            "requests_sent": stats.sent,
            "failed_requests": stats.failed_requests,
            "cache_hits": stats.cache_hits,
            "shared": stats.shared,
            "limit": self.limit,
            "partial": self.limit is not None,
            "annotated": self.annotate,
            "pipeline_commit": self.commit,
            "started_at": started,
            "completed_at": now(),
        }

    def _relative_path(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def _relative(self, hashes: dict[str, str]) -> dict[str, str]:
        return {self._relative_path(Path(p)): h for p, h in hashes.items()}


def model_fingerprint(registry: ModelRegistry, name: str, mask: bool = True) -> dict[str, Any]:
    """What in a model's registry entry changes its answers (not its URL or concurrency); with `mask`,
    as the manifest records it: secret-looking option values (a token in `options`) masked."""
    try:
        system = registry.system_prompt(name)
        return {
            "backend": registry.spec(name).backend,
            "model_id": registry.model_id(name),
            "system_prompt_sha256": hashlib.sha256(system.encode()).hexdigest() if system else None,
            "options": redact(registry.defaults(name)) if mask else registry.defaults(name),
        }
    except ShapingError as err:
        return {"error": str(err)}


def summary(manifest: dict[str, Any]) -> str:
    """The stage's closing line: records done and failed by type, requests sent and not sent."""
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(manifest["errors_by_type"].items()))
    failed = f" ({by_type})" if by_type else ""
    resumed = f", {manifest['resumed']} resumed from the journal" if manifest["resumed"] else ""
    return (
        f"{manifest['pipeline']}: {manifest['samples']} samples, {manifest['errors']} failed{failed} "
        f"of {manifest['records']} records{resumed}; {manifest['requests']} requests: "
        f"{manifest['requests_sent']} sent ({manifest['failed_requests']} failed), "
        f"{manifest['cache_hits']} from the cache, {manifest['shared']} shared with an identical one in flight"
    )


def _write_jsonl(path: Path, rows: Any) -> None:
    options = orjson.OPT_NON_STR_KEYS  # input records may hold int keys; json.dumps would write them too
    atomic_write_text(path, b"".join(orjson.dumps(row, option=options, default=str) + b"\n" for row in rows).decode())


def _script_root(source: Path | None) -> Path:
    try:
        return find_repo_root(source.parent if source else None)
    except ShapingError:
        return find_repo_root()


def _as_script(body: Callable[[], T]) -> T:
    """`python pipelines/<file>.py`: log like a stage, and a ShapingError is one message, exit 1."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return body()
    except ShapingError as err:
        log.error("%s", err)
        sys.exit(1)


def vars_all(cls: type) -> dict[str, Any]:
    """Class attributes including inherited ones (subclass wins)."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass))
    return merged
