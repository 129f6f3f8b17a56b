"""Registry models as OpenAI-compatible endpoints, which DSPy's LMs (LiteLLM) call.

An `openai` model is its own endpoint (base_url, model, the key from api_key_env). An `hf` model is
served for the run by the project's own server (`python -m shaping.serve` on a free 127.0.0.1 port):
one server per base model, each registry model with an adapter under its registry name. Other
backends (vllm's offline engine, tinker) have no endpoint: point the model at a server instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError


@dataclass(frozen=True)
class Endpoint:
    """What a DSPy LM needs to reach one model: `dspy.LM(f"openai/{model}", api_base=..., ...)`."""

    model: str  # the name the server answers to
    api_base: str  # http://host:port/v1
    api_key: str = "none"  # never logged or recorded
    temperature: float = 1.0
    max_tokens: int = 256

    def describe(self) -> dict[str, object]:
        """For the run record: no key."""
        return {"model": self.model, "api_base": self.api_base, "temperature": self.temperature}


def _openai_endpoint(name: str, spec: ModelSpec) -> Endpoint:
    urls = spec.base_url if isinstance(spec.base_url, list | tuple) else [spec.base_url]
    if not urls or not urls[0]:
        raise ShapingError(f"models.{name}.base_url: not set; the openai backend needs the endpoint's URL")
    key = "none"
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env, "")
        if not key:
            raise ShapingError(f"models.{name}.api_key_env: the environment variable {spec.api_key_env} is empty")
    return Endpoint(str(spec.model), str(urls[0]).rstrip("/"), key, float(spec.temperature), int(spec.max_new_tokens))


@contextmanager
def model_endpoints(
    models: Mapping[str, ModelSpec], names: list[str], root: Path, log_dir: Path | None = None
) -> Iterator[dict[str, Endpoint]]:
    """{registry name: Endpoint} for `names`, the hf ones served by shaping.serve until the block ends."""
    from shaping.serve.launch import running_server

    for name in names:
        if name not in models:
            raise ShapingError(f"models.{name}: not in the model registry ({', '.join(models)})")
    out: dict[str, Endpoint] = {}
    local: dict[str, list[str]] = {}  # base model -> registry names served over it
    for name in dict.fromkeys(names):
        spec = models[name]
        if spec.backend == "openai":
            out[name] = _openai_endpoint(name, spec)
        elif spec.backend == "hf":
            local.setdefault(str(spec.model), []).append(name)
        else:
            raise ShapingError(
                f"models.{name}.backend={spec.backend}: DSPy reaches models over HTTP; use backend hf (served "
                "here by shaping.serve) or openai with base_url (a vLLM or other OpenAI-compatible server)"
            )
    with ExitStack() as stack:
        for base, served in local.items():
            path = root / base if (root / base).exists() else Path(base)
            adapters = {n: root / str(models[n].adapter) for n in served if models[n].adapter}
            log_path = log_dir / f"serve-{len(out)}.log" if log_dir is not None else None
            if log_path is not None:
                log_path.parent.mkdir(parents=True, exist_ok=True)
            url = stack.enter_context(
                running_server(path, adapters, args=["--served-model-name", "__base__"], log_path=log_path)
            )
            for n in served:
                spec = models[n]
                model = n if n in adapters else "__base__"
                out[n] = Endpoint(model, url, "none", float(spec.temperature), int(spec.max_new_tokens))
        yield out
