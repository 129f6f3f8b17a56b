"""apply_model: model URIs as registry entries (driven against a real HTTP endpoint on 127.0.0.1) and
DSPy LMs; errors name the URI and the accepted forms, never a key. (apply_lora runs against a live
shaping.serve in tests/test_serve.py.)"""

from __future__ import annotations

import sys

import pytest

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference import ChatRequest
from shaping.inference.apply import apply_model, parse_model_uri
from shaping.inference.openai_compat import OpenAIBackend
from shaping.inference.registry import ModelRegistry

from .test_openai_backend import Endpoint

KEY = "sk-test-0d9f-not-real"


@pytest.mark.parametrize(
    ("uri", "env", "expected"),
    [
        (
            "openai://gpt-4o-mini@https://api.openai.com/v1",
            {"OPENAI_API_KEY": KEY},
            ("gpt-4o-mini", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        ),
        ("openai://org/m-1@api.example.com/v1/", {}, ("org/m-1", "https://api.example.com/v1", None)),
        # endpoint:// sends no key unless it names its variable, even with OPENAI_API_KEY set
        (
            "endpoint://127.0.0.1:8000/v1?model=tuned",
            {"OPENAI_API_KEY": KEY},
            ("tuned", "http://127.0.0.1:8000/v1", None),
        ),
        ("endpoint://http://h:1/v1?model=m&api_key_env=MY_KEY", {}, ("m", "http://h:1/v1", "MY_KEY")),
        ("tuned", {"OPENAI_BASE": "http://127.0.0.1:9/v1"}, ("tuned", "http://127.0.0.1:9/v1", None)),
        (
            "tuned",
            {"OPENAI_API_BASE": "http://b/v1", "OPENAI_API_KEY": KEY},
            ("tuned", "http://b/v1", "OPENAI_API_KEY"),
        ),
    ],
)
def test_model_uri_forms(uri: str, env: dict[str, str], expected: tuple[str, str, str | None]) -> None:
    applied = parse_model_uri(uri, env)
    assert (applied.model, applied.base_url, applied.api_key_env) == expected
    assert KEY not in repr(applied)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("openai://gpt-4o", "openai:// takes <model>@<base URL>"),
        ("endpoint://http://h/v1", "endpoint:// takes <base URL>?model=<model>"),
        ("tuned", "a bare model name needs OPENAI_BASE or OPENAI_API_BASE"),
        ("s3://bucket/model", "unknown scheme s3://"),
        ("endpoint://h/v1?model=m&temp=1", "unknown query key 'temp'"),
        (f"openai://m@https://user:{KEY}@api.example.com/v1", "carries credentials"),
        (f"endpoint://https://h/v1?model=m&api_key={KEY}", "unknown query key 'api_key'"),
    ],
)
def test_malformed_model_uri_names_it_and_the_forms(uri: str, needle: str) -> None:
    with pytest.raises(ShapingError) as caught:
        parse_model_uri(uri, {})
    message = str(caught.value)
    assert needle in message and "expected openai://<model>@<base URL>, endpoint://<base URL>?model=" in message
    assert f"model URI '{uri[:14]}" in message  # the URI is named (its credentials masked)
    assert KEY not in message


def test_applied_model_is_a_registry_entry_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry replaces one of its name (what was built from the old spec is dropped), and its
    backend sends the key from the environment as a Bearer token."""
    monkeypatch.setenv("ECHO_KEY", KEY)
    registry = ModelRegistry({"student": ModelSpec(model="models/base")})
    registry.system_prompt("student")  # something built from the old spec
    with Endpoint() as url:
        applied, lm = apply_model(
            f"endpoint://{url}?model=echo-model&api_key_env=ECHO_KEY", registry, "student", temperature=0.0
        )
        backend = registry.backend("student")
        replies = backend.generate([ChatRequest([{"role": "user", "content": "hi"}])])  # type: ignore[union-attr]
        authorizations = Endpoint.last.authorizations if Endpoint.last else []
    assert lm is None and isinstance(backend, OpenAIBackend)
    spec = registry.spec("student")
    assert (spec.backend, spec.model, spec.base_url, spec.api_key_env, spec.temperature) == (
        "openai",
        "echo-model",
        url,
        "ECHO_KEY",
        0.0,
    )
    assert [r.text for r in replies] == ["echo: hi"] and authorizations == [f"Bearer {KEY}"]
    assert KEY not in repr(applied) + repr(spec)


def test_dspy_lm_reads_its_key_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISSING_KEY", raising=False)
    applied = parse_model_uri("endpoint://http://127.0.0.1:9/v1?model=m&api_key_env=MISSING_KEY", {})
    with pytest.raises(ShapingError, match="environment variable MISSING_KEY is not set") as caught:
        applied.dspy_lm()
    assert "http://127.0.0.1:9/v1" in str(caught.value)
    monkeypatch.setenv("MISSING_KEY", KEY)
    with Endpoint() as url:
        _, lm = apply_model(f"endpoint://{url}?model=echo-model&api_key_env=MISSING_KEY", dspy=True)
        said = lm(messages=[{"role": "user", "content": "hi"}], cache=False)
        authorizations = Endpoint.last.authorizations if Endpoint.last else []
    assert lm.model == "openai/echo-model" and said == ["echo: hi"]  # DSPy (LiteLLM) over real HTTP
    assert authorizations == [f"Bearer {KEY}"]  # the key from the environment, handed to DSPy only
    monkeypatch.setitem(sys.modules, "dspy", None)  # not installed
    with pytest.raises(ShapingError, match=r"needs the dspy extra: pip install -e '\.\[dspy\]'"):
        applied.dspy_lm()
