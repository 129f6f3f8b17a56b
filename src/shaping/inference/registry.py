"""The model registry: short names (`models.<name>` in the config) to specs and backends."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference.types import AsyncChatBackend, ChatBackend

BACKENDS = ("hf", "openai", "vllm", "tinker")

# (name, spec, request defaults, repository root, seed) -> the backend
BackendFactory = Callable[[str, ModelSpec, dict[str, Any], Path, int], "ChatBackend | AsyncChatBackend"]

# Backends from vendor integrations, which sit above this package: each registers itself when imported
# (shaping.integrations.tinker.sampling registers `tinker`), and the stage scripts import them.
REGISTERED: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    REGISTERED[name] = factory


class ModelRegistry:
    def __init__(self, specs: dict[str, ModelSpec], seed: int = 0, root: Path | None = None) -> None:
        self.specs = specs
        self.seed = seed
        self.root = root or Path.cwd()
        self._backends: dict[str, ChatBackend | AsyncChatBackend] = {}
        self._async_backends: dict[str, AsyncChatBackend] = {}
        self._system_prompts: dict[str, str | None] = {}
        self._model_ids: dict[str, str] = {}

    def spec(self, name: str) -> ModelSpec:
        if name not in self.specs:
            known = ", ".join(sorted(self.specs)) or "none"
            raise ShapingError(
                f"models.{name}: not in the model registry (known: {known}); "
                f"add it to conf/models/ or pass +models.{name}.model=..."
            )
        return self.specs[name]

    def forget(self, name: str) -> None:
        """Drop what was built from `models.<name>` (its backend, prompt, id): its spec changed."""
        self._backends.pop(name, None)
        self._async_backends.pop(name, None)
        self._system_prompts.pop(name, None)
        self._model_ids.pop(name, None)

    def system_prompt(self, name: str) -> str | None:
        if name not in self._system_prompts:
            self._system_prompts[name] = self._read_system_prompt(name)
        return self._system_prompts[name]

    def _read_system_prompt(self, name: str) -> str | None:
        spec = self.spec(name)
        if spec.sysprompt is not None:
            return spec.sysprompt
        if spec.sysprompt_file:
            path = self.root / spec.sysprompt_file
            if not path.is_file():
                raise ShapingError(f"models.{name}.sysprompt_file: {spec.sysprompt_file} not found")
            return path.read_text(encoding="utf-8").strip()
        return None

    def defaults(self, name: str) -> dict[str, Any]:
        """The request options every request to this model starts from."""
        spec = self.spec(name)
        return {
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_new_tokens": spec.max_new_tokens,
            "min_new_tokens": spec.min_new_tokens,
            **spec.options,
        }

    def model_id(self, name: str) -> str:
        """What identifies the model's answers in the response cache: backend and model, plus,
        for a local folder, each file's name, size and mtime (a retrained base is a new model).
        Read once per registry: the pipeline asks for it on every round of requests."""
        if name not in self._model_ids:
            self._model_ids[name] = self._read_model_id(name)
        return self._model_ids[name]

    def _read_model_id(self, name: str) -> str:
        spec = self.spec(name)
        ident = f"{spec.backend}:{spec.model}"
        local = self.root / spec.model
        # local weights (a base or an adapter) enter the id by their files' stats: retraining makes a new model
        folders = [f for f in ([local] + ([self.root / spec.adapter] if spec.adapter else [])) if f.is_dir()]
        if spec.backend in ("hf", "vllm") and folders:
            stats = sorted(
                (i, p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                for i, folder in enumerate(folders)
                for p in folder.rglob("*")
                if p.is_file()
            )
            if spec.adapter:
                ident += f"+{spec.adapter}"
            ident += ":" + hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
        if spec.backend == "tinker" and local.is_file():  # a Tinker reference: retraining changes its tinker:// path
            ident += ":" + hashlib.sha256(local.read_bytes()).hexdigest()[:16]
        return ident

    def async_backend(self, name: str) -> AsyncChatBackend:
        """The model's backend as the engine drives it: one request at a time, concurrently. A
        batch backend (hf, vllm) gets the requests that arrive together in one generate() call,
        at most max_concurrency of them."""
        if name not in self._async_backends:
            backend = self.backend(name)
            if isinstance(backend, AsyncChatBackend):
                self._async_backends[name] = backend
            else:
                from shaping.inference.batching import BatchingBackend

                self._async_backends[name] = BatchingBackend(backend, self.spec(name).max_concurrency, name)
        return self._async_backends[name]

    def close(self) -> None:
        """Stop the batch backends' worker threads."""
        from shaping.inference.batching import BatchingBackend

        for backend in self._async_backends.values():
            if isinstance(backend, BatchingBackend):
                backend.shutdown()

    def backend(self, name: str) -> ChatBackend | AsyncChatBackend:
        if name not in self._backends:
            spec = self.spec(name)
            if spec.backend not in BACKENDS:
                raise ShapingError(f"models.{name}.backend={spec.backend!r}: unknown; available: {BACKENDS}")
            defaults = self.defaults(name)
            if spec.backend == "openai":
                from shaping.inference.openai_compat import OpenAIBackend

                self._backends[name] = OpenAIBackend(name, spec, defaults)
                return self._backends[name]
            if spec.backend in REGISTERED:
                self._backends[name] = REGISTERED[spec.backend](name, spec, defaults, self.root, self.seed)
                return self._backends[name]
            if spec.backend == "tinker":
                raise ShapingError(
                    f"models.{name}.backend=tinker: the Tinker backend is not loaded in this process; "
                    "import shaping.integrations.tinker.sampling first (the stage scripts do)"
                )
            model_path = self._local_model_path(name)
            if spec.backend == "vllm":
                from shaping.inference.vllm import VLLMBackend

                self._backends[name] = VLLMBackend(name, spec, model_path, self.seed, defaults)
                return self._backends[name]
            from shaping.inference.hf import HFBackend

            adapter = self._adapter_path(name)
            self._backends[name] = HFBackend(model_path, spec.max_concurrency, self.seed, defaults, adapter)
        return self._backends[name]

    def _adapter_path(self, name: str) -> str | None:
        adapter = self.spec(name).adapter
        if adapter is None:
            return None
        if self.spec(name).backend != "hf":
            raise ShapingError(
                f"models.{name}.adapter: only the hf backend loads adapters; serve it with shaping.serve"
            )
        path = self.root / adapter
        if not (path / "adapter_config.json").is_file():
            raise ShapingError(
                f"models.{name}.adapter={adapter}: no adapter_config.json there; point it at a PEFT adapter folder "
                "(the train stage writes models/adapter)"
            )
        return str(path)

    def _local_model_path(self, name: str) -> str:
        """A folder under the repository, or a hub id as given."""
        model_path = self.spec(name).model
        local = self.root / model_path
        if local.exists():
            return str(local)
        if not Path(model_path).is_absolute() and model_path.startswith(("models/", "./")):
            raise ShapingError(f"models.{name}.model: {model_path} not found (run `dvc repro prepare_base`)")
        return model_path
