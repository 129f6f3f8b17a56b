"""Applying what was learned to a running model: a model URI as a registry entry and a DSPy LM
(`apply_model`), a trained adapter attached to a running server (`apply_lora`, `unload_lora`).

    apply_model("openai://gpt-4o-mini@https://api.openai.com/v1")       # key from OPENAI_API_KEY
    apply_model("endpoint://http://127.0.0.1:8000/v1?model=tuned")      # shaping.serve, vLLM, Ollama
    apply_model("tuned")                                                  # base from OPENAI_BASE / OPENAI_API_BASE
    apply_lora("models/adapter", "http://127.0.0.1:8000/v1", name="tuned")  # then model="tuned" answers
    unload_lora("tuned", "http://127.0.0.1:8000/v1")

`apply_lora` speaks vLLM's routes (POST /v1/load_lora_adapter {lora_name, lora_path}, POST
/v1/unload_lora_adapter {lora_name}), which `python -m shaping.serve` answers too; vLLM needs
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora. The path is read by the server, so it
must be a folder on the server's machine. Keys come only from environment variables, named by
`api_key_env`; they are never printed, logged or kept on the returned objects.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httpx

from shaping.config.schema import ModelBackend, ModelSpec
from shaping.errors import ShapingError
from shaping.inference.redact import check_base_url, mask_url

if TYPE_CHECKING:
    from shaping.inference.registry import ModelRegistry

BASE_ENVS = ("OPENAI_BASE", "OPENAI_API_BASE", "OPENAI_BASE_URL")  # where a bare model name's endpoint comes from
# the key's variable when an openai:// URI or a bare name names none (?api_key_env=NAME); an
# endpoint:// URI sends a key only when it names its variable
KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "no-key"  # what DSPy (LiteLLM) sends to an endpoint that wants no key: it refuses an empty one
FORMS = (
    "openai://<model>@<base URL>, endpoint://<base URL>?model=<model>, or a bare model name with "
    f"{' or '.join(BASE_ENVS[:2])} set (each optionally with ?api_key_env=<variable holding the key>)"
)
DSPY_EXTRA = "pip install -e '.[dspy]'"


# apply_model ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppliedModel:
    """A model reached through an OpenAI-compatible endpoint: `model` at `base_url`, its key in the
    environment variable `api_key_env` (None: the endpoint needs none). Holds no secret."""

    uri: str
    model: str
    base_url: str
    api_key_env: str | None = None

    def spec(self, **fields: Any) -> ModelSpec:
        """A registry entry (`models.<name>`) for it: the openai backend; `fields` set the rest
        (temperature, max_new_tokens, sysprompt, ...)."""
        spec = ModelSpec(
            backend=ModelBackend.openai, model=self.model, base_url=self.base_url, api_key_env=self.api_key_env
        )
        return dataclasses.replace(spec, **fields)

    def api_key(self) -> str | None:
        """The key, read from the environment when asked for; an unset variable is an error naming it."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ShapingError(
                f"{self.uri}: environment variable {self.api_key_env} is not set (the key for {self.base_url}); "
                "export it: keys never go in URIs or config"
            )
        return key

    def dspy_lm(self, **kwargs: Any) -> Any:
        """`dspy.LM("openai/<model>", api_base=<base_url>, api_key=<from the environment>, **kwargs)`."""
        try:
            import dspy
        except ImportError as err:
            raise ShapingError(f"{self.uri}: a DSPy LM needs the dspy extra: {DSPY_EXTRA} ({err})") from None
        return dspy.LM(f"openai/{self.model}", api_base=self.base_url, api_key=self.api_key() or NO_KEY, **kwargs)


def parse_model_uri(uri: str, environ: Mapping[str, str] | None = None) -> AppliedModel:
    """`uri` in one of FORMS as an AppliedModel; a malformed one is a ShapingError naming it (its
    credentials masked) and the forms."""
    env = os.environ if environ is None else environ
    text, _, query = uri.strip().partition("?")
    scheme, sep, rest = text.partition("://")
    # shown in errors: the base URL's credentials masked, the model name kept
    whole = uri.strip()
    if scheme == "openai" and "@" in rest:
        shown = f"openai://{rest.split('@', 1)[0]}@{mask_url(whole.split('@', 1)[1])}"
    elif scheme == "endpoint":
        shown = "endpoint://" + mask_url(whole.removeprefix("endpoint://"))
    else:
        shown = mask_url(whole)

    def bad(problem: str) -> ShapingError:
        return ShapingError(f"model URI {shown!r}: {problem}; expected {FORMS}")

    params = _query(query, bad)
    key_env = params.pop("api_key_env", None)
    if not sep:
        if not text:
            raise bad("no model name")
        base = next((env[name] for name in BASE_ENVS if env.get(name)), None)
        if base is None:
            raise bad(f"a bare model name needs {' or '.join(BASE_ENVS)} in the environment (none is set)")
        model = text
    elif scheme == "openai":
        model, at, base = rest.partition("@")
        if not at or not model or not base:
            raise bad("openai:// takes <model>@<base URL>")
    elif scheme == "endpoint":
        base, model = rest, params.pop("model", "")
        if not base or not model:
            raise bad("endpoint:// takes <base URL>?model=<model>")
    else:
        raise bad(f"unknown scheme {scheme}://")
    if key_env is None and scheme != "endpoint" and env.get(KEY_ENV):
        key_env = KEY_ENV  # OpenAI's own variable, for OpenAI-style URIs only: never sent to an endpoint:// unasked
    if params:
        raise bad(f"unknown query key {sorted(params)[0]!r} (known: model for endpoint://, api_key_env)")
    base = _with_scheme(base)
    try:
        check_base_url("<applied>", base)
    except ShapingError:
        raise bad("the base URL carries credentials; put the key in an environment variable") from None
    return AppliedModel(uri=shown, model=model, base_url=base.rstrip("/"), api_key_env=key_env)


def _query(query: str, bad: Any) -> dict[str, str]:
    if not query:
        return {}
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise bad(f"malformed query {query!r}; use key=value&...") from None
    return {key: values[-1] for key, values in parsed.items()}


def _with_scheme(base: str) -> str:
    """http:// for a host on this machine, https:// elsewhere, when the URL names no scheme."""
    if "://" in base:
        return base
    host = base.split("/", 1)[0].rsplit(":", 1)[0]
    local = host in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0") or host.startswith("127.")
    return ("http://" if local else "https://") + base


def apply_model(
    uri: str,
    registry: ModelRegistry | None = None,
    name: str | None = None,
    *,
    dspy: bool = False,
    environ: Mapping[str, str] | None = None,
    **fields: Any,
) -> tuple[AppliedModel, Any]:
    """Parse `uri` (FORMS); with `registry`, add it as `models.<name>` (default: its model name) with
    the openai backend and `fields` (temperature, max_new_tokens, ...), replacing an entry of that
    name; with `dspy`, also build its DSPy LM. Returns (the applied model, the LM or None)."""
    applied = parse_model_uri(uri, environ)
    if registry is not None:
        key = name or applied.model
        registry.specs[key] = applied.spec(**fields)
        registry.forget(key)
    return applied, applied.dspy_lm() if dspy else None


# apply_lora -----------------------------------------------------------------------------------------------
def _server_root(server: str) -> str:
    """The URL the /v1/... routes hang from: `server` with or without its /v1."""
    return server.rstrip("/").removesuffix("/v1")


def _headers(api_key_env: str | None) -> dict[str, str]:
    if api_key_env is None:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise ShapingError(f"api_key_env: environment variable {api_key_env} is not set (the server's key)")
    return {"Authorization": f"Bearer {key}"}


def _post(server: str, route: str, body: dict[str, Any], api_key_env: str | None, timeout_s: float) -> str:
    url = f"{_server_root(server)}/v1/{route}"
    try:
        response = httpx.post(url, json=body, headers=_headers(api_key_env), timeout=timeout_s)
    except httpx.HTTPError as err:
        raise ShapingError(f"{mask_url(url)}: cannot reach the server ({type(err).__name__}: {err})") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            try:  # vLLM before 0.10 answered {"object": "error", "message": ...}
                message = response.json()["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip()[:500]
        if response.status_code == 404 and message.strip().lower() == "not found":  # the route itself
            message += (
                ": this server does not load adapters while serving; start it with "
                "--allow-runtime-lora-updating (shaping.serve) or VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (vLLM)"
            )
        raise ShapingError(f"{mask_url(url)}: HTTP {response.status_code}: {message}")
    return response.text


def apply_lora(
    adapter: str | Path,
    server: str,
    name: str | None = None,
    *,
    replace: bool = False,
    api_key_env: str | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Attach the PEFT adapter folder `adapter` to the running server at `server` (its base URL,
    with or without /v1) as model `name` (default: the folder's name), without a restart; returns
    the name requests use. `replace` reloads a name already served (vLLM's load_inplace);
    `api_key_env` names the variable holding the server's key. A refusal is a ShapingError with the
    server's message (it names the field: lora_name or lora_path)."""
    local = Path(adapter)
    path = str(local.resolve()) if local.exists() else str(adapter)  # the server may run elsewhere
    lora_name = name or local.resolve().name
    body: dict[str, Any] = {"lora_name": lora_name, "lora_path": path}
    if replace:
        body["load_inplace"] = True
    _post(server, "load_lora_adapter", body, api_key_env, timeout_s)
    return lora_name


def unload_lora(name: str, server: str, *, api_key_env: str | None = None, timeout_s: float = 60.0) -> None:
    """Detach adapter `name` from the server at `server`; requests to it get 404 afterwards."""
    _post(server, "unload_lora_adapter", {"lora_name": name}, api_key_env, timeout_s)
