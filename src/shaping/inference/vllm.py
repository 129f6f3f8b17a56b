"""The `vllm` backend: vLLM's offline engine (`vllm.LLM`) on a GPU host, no server needed.

vLLM is an optional extra (`pip install -e '.[vllm]'`, CUDA only) imported when a `vllm`
model is first used. The engine batches what it is given itself, so give it a large
`max_concurrency` (requests per `LLM.chat` call). `engine_options` in the registry entry go to
`vllm.LLM(...)` (tensor_parallel_size, gpu_memory_utilization, max_model_len, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference.redact import redact
from shaping.inference.types import ChatRequest, ChatResponse, request_seed

log = logging.getLogger(__name__)

# request options (hf and OpenAI spellings) -> vllm.SamplingParams fields
RENAMED = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "max_completion_tokens": "max_tokens"}
SAMPLING_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "max_tokens",
        "min_tokens",
        "stop",
        "stop_token_ids",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "ignore_eos",
    }
)


def sampling_kwargs(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The `vllm.SamplingParams(**kwargs)` for one request's merged options; an option vLLM
    does not take is an error naming it (silently dropping it would change what is sampled)."""
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        field = RENAMED.get(key, key)
        if field not in SAMPLING_FIELDS:
            raise ShapingError(
                f"models.{name}: request option {key!r} is not a vLLM sampling parameter "
                f"(known: {', '.join(sorted(SAMPLING_FIELDS | set(RENAMED)))})"
            )
        kwargs[field] = list(value) if field == "stop" and not isinstance(value, str) else value
    return kwargs


class VLLMBackend:
    """A local model in vLLM's offline engine as a ChatBackend (the engine batches the rest)."""

    def __init__(self, name: str, spec: ModelSpec, model_path: str, seed: int, defaults: dict[str, Any]) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ShapingError(
                f"models.{name}.backend=vllm: the vllm package is not installed ({err}); on a CUDA host run "
                f"`pip install -e '.[vllm]'`, or use backend=hf (local transformers) or backend=openai "
                f"against a running `vllm serve`"
            ) from None
        self.name = name
        self.defaults = defaults
        self.seed = seed
        self._vllm = vllm
        # engine_options may hold hf_token or the like: the log line masks them
        log.info("loading %s into vLLM (%s)", model_path, redact(spec.engine_options) or "default engine options")
        self.llm = vllm.LLM(model=model_path, seed=seed, **spec.engine_options)

    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        params = []
        for r in requests:
            kwargs = sampling_kwargs(self.name, {**self.defaults, **r.options})
            if r.key is not None and "seed" not in kwargs:  # the request's own stream, whatever its batch
                kwargs["seed"] = request_seed(self.seed, r.key)
            params.append(self._vllm.SamplingParams(**kwargs))
        outputs = self.llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        responses: list[ChatResponse] = []
        for index, output in enumerate(outputs):
            completion = output.outputs[0]
            response = ChatResponse(
                text=completion.text,
                finish_reason=completion.finish_reason,
                completion_tokens=len(completion.token_ids),
            )
            responses.append(response)
            if on_response is not None:
                on_response(index, response)
        return responses
