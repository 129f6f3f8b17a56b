"""`backend: tinker` of the model registry: a batch ChatBackend over a Tinker SamplingClient.

# conf/models/: a model trained by `backend=tinker` (its reference file), or any Tinker base model
tuned:
  backend: tinker
  model: models/adapter/tinker.json       # or tinker://<run>/sampler_weights/final, or Qwen/Qwen3-8B
  engine_options: {renderer: auto}        # base_model/renderer, needed for a bare tinker:// path
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference.hf import truncate_at_stop
from shaping.inference.registry import register_backend
from shaping.inference.types import ChatRequest, ChatResponse, request_seed
from shaping.integrations.tinker.client import TINKER_SCHEME, TinkerReference, import_tinker, service_client
from shaping.integrations.tinker.renderers import Renderer, load_renderer, resolve_renderer_name

log = logging.getLogger(__name__)


@dataclass
class TinkerSampler:
    """A SamplingClient and the renderer its prompts are built with."""

    client: Any  # tinker.SamplingClient
    renderer: Renderer
    tinker: ModuleType
    seed: int = 0
    _calls: int = field(default=0, init=False)

    @classmethod
    def connect(
        cls, service: Any, model_path: str | None, base_model: str, renderer: Renderer, seed: int = 0
    ) -> TinkerSampler:
        """A client for the weights at `model_path` (tinker://), or for `base_model` itself."""
        client = service.create_sampling_client(model_path=model_path, base_model=None if model_path else base_model)
        return cls(client.result(), renderer, import_tinker(), seed)

    def _seed_of(self, request: ChatRequest) -> int:
        """A keyed request's own seed (its reply depends on nothing else); else the next of this client's."""
        if request.key is not None:
            return request_seed(self.seed, request.key) % 2**31  # 31 bits: a seed any sampler takes
        return self.seed + self._calls

    def sample(self, requests: list[ChatRequest], defaults: dict[str, Any]) -> Iterator[tuple[int, ChatResponse]]:
        """Every request is sent before any answer is awaited (the service batches them)."""
        pending = []
        for index, request in enumerate(requests):
            options = {**defaults, **request.options}
            if options.get("min_new_tokens"):
                log.debug("tinker sampling has no min_new_tokens; ignored")
            self._calls += 1
            params = self.tinker.SamplingParams(
                max_tokens=int(options.get("max_new_tokens", 256)),
                temperature=float(options.get("temperature", 1.0)),
                top_p=float(options.get("top_p", 1.0)),
                seed=int(options.get("seed", self._seed_of(request))),
                stop=self.renderer.stop_sequences(),
            )
            prompt = self.tinker.ModelInput.from_ints(self.renderer.generation_prompt(request.messages))
            stop = [s for s in options.get("stop") or [] if s]
            pending.append((index, stop, self.client.sample(prompt=prompt, num_samples=1, sampling_params=params)))
        for index, stop, future in pending:
            try:
                sequence = future.result().sequences[0]
            except Exception as err:  # a failed request is one failed response, as with every backend
                yield index, ChatResponse(text=None, error=f"tinker: {type(err).__name__}: {err}")
                continue
            text, ended = self.renderer.parse(list(sequence.tokens))
            text, stopped = truncate_at_stop(text, stop)
            finish = "stop" if ended or stopped or sequence.stop_reason == "stop" else "length"
            yield index, ChatResponse(text=text, finish_reason=finish, completion_tokens=len(sequence.tokens))


def registry_target(name: str, spec: ModelSpec, root: Path) -> tuple[str | None, str, str]:
    """(model_path, base_model, renderer setting) of `models.<name>` with backend tinker."""
    options = spec.engine_options
    local = root / spec.model
    if spec.model.endswith(".json") or local.is_file():
        if not local.is_file():
            raise ShapingError(
                f"models.{name}.model: {spec.model} not found (run `dvc repro train` with backend=tinker)"
            )
        ref = TinkerReference.read(local)
        return ref.model_path, ref.base_model, str(options.get("renderer", ref.renderer))
    if spec.model.startswith(TINKER_SCHEME):
        if not options.get("base_model"):
            raise ShapingError(
                f"models.{name}.engine_options.base_model: needed with a tinker:// path (the model it was trained from)"
            )
        return spec.model, str(options["base_model"]), str(options.get("renderer", "auto"))
    return None, spec.model, str(options.get("renderer", "auto"))


class TinkerBackend:
    """`backend: tinker` in the model registry: a batch ChatBackend over a Tinker SamplingClient."""

    def __init__(self, name: str, spec: ModelSpec, defaults: dict[str, Any], root: Path, seed: int = 0) -> None:
        service = service_client()
        model_path, base_model, setting = registry_target(name, spec, root)
        renderer = load_renderer(resolve_renderer_name(setting, base_model), base_model)
        self.sampler = TinkerSampler.connect(service, model_path, base_model, renderer, seed)
        self.defaults = defaults
        log.info("models.%s: tinker %s (renderer %s)", name, model_path or base_model, renderer.name)

    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        results = [ChatResponse(text=None, error="tinker: no answer") for _ in requests]
        for index, response in self.sampler.sample(requests, self.defaults):
            results[index] = response
            if on_response is not None:
                on_response(index, response)
        return results


register_backend("tinker", TinkerBackend)
