"""A succeeded run's model, for `POST /runs/{id}/generate` and `/score`: its base and adapter folders
read from the experiment commit (DVC's cache) into `.dvc/tmp/shaping-runs/models/<id>/`, loaded once
and kept, and used by the same generate and score code as `src/generate.py` and `src/score.py`."""

from __future__ import annotations

import shutil
import tarfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from shaping.errors import ShapingError
from shaping.runs.artifacts import ArtifactNotFound, list_artifacts, open_artifact
from shaping.runs.queue import RunError, RunQueue

if TYPE_CHECKING:
    from shaping.scratch.runs import LoadedModel


class _ChunkReader:
    """A file-like view of an iterator of bytes, for tarfile's stream mode."""

    def __init__(self, chunks: Any) -> None:
        self.chunks = iter(chunks)
        self.buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        if size < 0:
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


class RunModels:
    """Each succeeded run's model (its base with its adapter), loaded on first use and kept."""

    def __init__(self, queue: RunQueue, device: str = "auto") -> None:
        self.queue = queue
        self.device = device
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _folder(self, ref: str, path: str, dest: Path) -> Path:
        """The output folder `path` at `ref`, unpacked under `dest` (once)."""
        target = dest / path
        if target.is_dir():
            return target
        try:
            _, _, chunks = open_artifact(self.queue.root, ref, path)
        except ArtifactNotFound as err:
            raise RunError("not_found", f"the run's model: {err}") from None
        scratch = dest / ".unpacking"
        shutil.rmtree(scratch, ignore_errors=True)
        with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as tar:  # type: ignore[call-overload]
            tar.extractall(scratch, filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        (scratch / Path(path).name).rename(target)
        shutil.rmtree(scratch, ignore_errors=True)
        return target

    def load(self, run_id: str) -> LoadedModel:
        ref = self.queue.result_ref(run_id)
        with self._lock:
            if run_id in self._loaded:
                return self._loaded[run_id]
            lock = self._locks.setdefault(run_id, threading.Lock())
        with lock:
            if run_id in self._loaded:
                return self._loaded[run_id]
            from shaping.scratch.runs import load_model

            params = yaml.safe_load(self.queue.show(ref, "params.yaml") or "{}") or {}
            paths = params.get("paths") or {}
            base_dir, adapter_dir = paths.get("base_dir", "models/base"), paths.get("adapter_dir", "models/adapter")
            listed = {a.path for a in list_artifacts(self.queue.root, ref)}
            missing = [p for p in (base_dir, adapter_dir) if p not in listed]
            if missing:
                raise RunError("not_found", f"run {run_id}: no {', '.join(missing)} among its outputs")
            dest = self.queue.state_dir / "models" / run_id
            base = self._folder(ref, base_dir, dest)
            adapter = self._folder(ref, adapter_dir, dest)
            try:
                loaded = load_model(base, adapter, self.device)
            except ShapingError as err:
                raise RunError("not_found", f"run {run_id}: {err}") from None
            self._loaded[run_id] = loaded
            return loaded

    def generate(self, run_id: str, prompt: str, **options: Any) -> list[dict[str, Any]]:
        from shaping.scratch.generation import generate

        loaded = self.load(run_id)
        with self._locks[run_id]:
            try:
                found = generate(loaded.model, loaded.tokenizer, prompt, **options)
            except ShapingError as err:
                raise RunError("invalid_request", str(err)) from None
        return [asdict(g) for g in found]

    def score(self, run_id: str, text: str, detail_level: str, top_k: int) -> dict[str, Any]:
        from shaping.scratch.generation import score

        loaded = self.load(run_id)
        with self._locks[run_id]:
            try:
                report = asdict(score(loaded.model, loaded.tokenizer, text, detail_level=detail_level, top_k=top_k))
            except ShapingError as err:
                raise RunError("invalid_request", str(err)) from None
        if report["per_token"] is None:
            del report["per_token"]
        return report

    def chat_prompt(self, run_id: str, message: str) -> str:
        """`message` as a user turn in the run's chat template (as `src/generate.py --chat` renders it)."""
        tokenizer = self.load(run_id).tokenizer
        messages = [{"role": "user", "content": message}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
