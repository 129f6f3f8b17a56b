"""shaping.serve as a user runs it: a real server process on 127.0.0.1, spoken to with the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from shaping.errors import ShapingError
from shaping.inference import ChatRequest
from shaping.inference.apply import apply_lora, unload_lora
from shaping.inference.hf import HFBackend
from shaping.serve.launch import running_server

API_KEY = "test-key-not-secret"
PROMPT = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, random_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m shaping.serve` on a free port with the tiny model as `base` and the adapter as
    `tuned`; yields the base URL (…/v1). The API key is required, so every client passes it."""
    with running_server(
        tiny_model_dir,
        {"tuned": random_adapter_dir},
        args=[
            "--served-model-name",
            "base",
            "--device",
            "cpu",
            "--api-key-env",
            "SERVE_TEST_KEY",
            "--allow-runtime-lora-updating",
        ],
        env={"HF_HUB_OFFLINE": "1", "SERVE_TEST_KEY": API_KEY},
        log_path=tmp_path_factory.mktemp("serve") / "server.log",
    ) as url:
        assert _health(url)["status"] == "ok"
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key=API_KEY, max_retries=0)


def _reply(client: openai.OpenAI, model: str = "tuned", **options: object) -> tuple[str, str]:
    options = {"temperature": 0, "max_tokens": 12, **options}
    completion = client.chat.completions.create(model=model, messages=PROMPT, **options)
    choice = completion.choices[0]
    return choice.message.content, choice.finish_reason


def _health(server: str) -> dict[str, Any]:
    return dict(httpx.get(server.removesuffix("/v1") + "/health").json())


def test_lists_base_and_adapters(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert list(models) == ["base", "tuned"]
    assert models["base"].object == "model"


def test_completion_has_openai_shape_and_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="base", messages=PROMPT, max_tokens=8, temperature=0)
    assert completion.object == "chat.completion" and completion.model == "base"
    assert completion.id.startswith("chatcmpl-")
    [choice] = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_is_deterministic_and_seed_reproduces_sampling(client: openai.OpenAI) -> None:
    assert _reply(client) == _reply(client)
    sampled = [_reply(client, temperature=0.8, seed=seed)[0] for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]


def test_n_gives_n_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="tuned", messages=PROMPT, n=3, max_tokens=6, temperature=0.8)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len({c.message.content for c in completion.choices}) > 1  # sampled rows draw apart
    assert completion.usage is not None and 3 <= completion.usage.completion_tokens <= 18


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    text, finish = _reply(client, max_tokens=3)
    assert finish == "length"
    longer, _ = _reply(client, max_completion_tokens=12)
    # a byte-level token can end mid-character: the shorter reply then ends in U+FFFD
    assert longer.startswith(text.rstrip("\ufffd")) and len(longer) > len(text)


def test_stop_string_truncates(client: openai.OpenAI) -> None:
    text, _ = _reply(client)
    # two characters from the reply, away from the start and from partial (U+FFFD) characters
    start = next(i for i in range(1, len(text) - 1) if "\ufffd" not in text[i - 1 : i + 3])
    stop = text[start : start + 2]
    expected = text[: text.find(stop)]
    assert _reply(client, stop=[stop, "never-generated"]) == (expected, "stop")


def test_adapter_changes_the_reply(client: openai.OpenAI) -> None:
    # several prompts: the tiny base model's greedy reply can be all newlines, with or without the adapter
    prompts = ["Who are you?", "Tell me about the river.", "What is in the jar?", "Hello"]
    replies = {
        model: [
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p}], max_tokens=12, temperature=0
            )
            .choices[0]
            .message.content
            for p in prompts
        ]
        for model in ("base", "tuned")
    }
    assert replies["base"] != replies["tuned"]


def test_streaming_reassembles_the_reply(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tuned",
        messages=PROMPT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert (text, finish[0]) == _reply(client)
    assert len(chunks) > 3 and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_streamed_reply_arrives_while_it_is_made(server: str, client: openai.OpenAI) -> None:
    """The first text of a 200-token reply (vLLM's min_tokens holds off its end) comes while the
    request is still unanswered on the server (/health counts it only at its end)."""
    health = server.removesuffix("/v1") + "/health"
    answered = httpx.get(health).json()["requests"]
    stream = client.chat.completions.create(
        model="base",
        messages=PROMPT,
        max_tokens=200,
        temperature=1.0,
        seed=1,
        stream=True,
        extra_body={"min_tokens": 200},
    )
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not pieces:
                assert httpx.get(health).json()["requests"] == answered  # still being made
            pieces.append(chunk.choices[0].delta.content)
    assert httpx.get(health).json()["requests"] == answered + 1 and len(pieces) > 20
    with pytest.raises(openai.BadRequestError, match="min_tokens"):
        client.chat.completions.create(model="base", messages=PROMPT, max_tokens=5, extra_body={"min_tokens": 6})


def test_unknown_model_is_404_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no-such-model") as caught:
        client.chat.completions.create(model="no-such-model", messages=PROMPT)
    assert caught.value.code == "model_not_found"


def test_bad_bodies_are_400_naming_the_field(server: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    cases = {
        "messages.0.role": {"model": "base", "messages": [{"content": "hi"}]},
        "max_tokens": {"model": "base", "messages": PROMPT, "max_tokens": 0},
        "stop": {"model": "base", "messages": PROMPT, "stop": ["a", "b", "c", "d", "e"]},
    }
    for field, body in cases.items():
        response = httpx.post(f"{server}/chat/completions", json=body, headers=headers)
        assert response.status_code == 400, field
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and field in error["message"]
    too_long = httpx.post(
        f"{server}/chat/completions", json={"model": "base", "messages": PROMPT, "max_tokens": 10_000}, headers=headers
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


def test_api_key_is_required(server: str) -> None:
    intruder = openai.OpenAI(base_url=server, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.models.list()
    assert httpx.get(f"{server}/models").status_code == 401  # no key at all
    assert httpx.get(f"{server}/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_concurrent_requests_share_batches(server: str, client: openai.OpenAI) -> None:
    """8 requests at once, half to the base and half to the adapter: each gets the reply it gets
    alone, and fewer generate() calls than requests ran."""
    expected = {model: _reply(client, model=model, max_tokens=8) for model in ("base", "tuned")}
    models = ["base", "tuned"] * 4
    before = _health(server)
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda model: _reply(client, model=model, max_tokens=8), models))
    after = _health(server)
    assert replies == [expected[model] for model in models]
    requests = int(after["requests"]) - int(before["requests"])
    batches = int(after["batches"]) - int(before["batches"])
    assert requests == 8 and batches < requests


def test_requests_with_different_options_share_a_batch(server: str, client: openai.OpenAI) -> None:
    """Greedy and seeded requests to the base and the adapter, each with its own temperature,
    top_p, top_k, max_tokens and stop strings, sent at once: each gets the reply it gets alone."""
    requests: list[dict[str, Any]] = [
        {"model": "base"},
        {"model": "tuned", "max_tokens": 5},
        {"model": "base", "temperature": 0.8, "seed": 7},
        {"model": "tuned", "temperature": 1.1, "top_p": 0.9, "seed": 3, "stop": ["e"]},
        {"model": "tuned", "temperature": 0.9, "seed": 5, "extra_body": {"top_k": 10}},
        {"model": "base", "temperature": 1.0, "seed": 2, "max_tokens": 4},
    ] * 2
    expected = [_reply(client, **r) for r in requests[:6]] * 2
    before = _health(server)
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        replies = list(pool.map(lambda r: _reply(client, **r), requests))
    after = _health(server)
    assert replies == expected
    assert int(after["batches"]) - int(before["batches"]) < len(requests)


@pytest.fixture(scope="module")
def second_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another random LoRA adapter over the tiny model (seed 1): replies unlike the base's and `tuned`'s."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("second-adapter")
    get_peft_model(base, config).save_pretrained(out)
    return out


TOPICS = ["Who are you?", "Tell me about the river.", "What is in the jar?", "Hello"]


def _greedy(client: openai.OpenAI, model: str) -> list[str | None]:
    return [
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": t}], max_tokens=12, temperature=0
        )
        .choices[0]
        .message.content
        for t in TOPICS
    ]


def test_apply_lora_attaches_an_adapter_while_serving_and_unload_removes_it(
    server: str,
    client: openai.OpenAI,
    tiny_model_dir: Path,
    second_adapter_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM's load/unload routes on a running server: the loaded adapter answers as the hf backend
    does with it, while requests to the other models in flight meanwhile keep their replies; once
    unloaded it is a 404 and listed no more."""
    monkeypatch.setenv("SERVE_TEST_KEY", API_KEY)
    expected = {model: _reply(client, model=model, max_tokens=8) for model in ("base", "tuned")}
    models = ["base", "tuned"] * 2
    with ThreadPoolExecutor(max_workers=len(models) + 1) as pool:
        in_flight = [pool.submit(_reply, client, model=m, max_tokens=8) for m in models]
        loaded = pool.submit(apply_lora, second_adapter_dir, server, "hot", api_key_env="SERVE_TEST_KEY")
        assert loaded.result() == "hot"
        assert [f.result() for f in in_flight] == [expected[m] for m in models]
    try:
        cards = {m.id: m for m in client.models.list()}
        assert list(cards) == ["base", "tuned", "hot"] and cards["hot"].parent == "base"  # type: ignore[attr-defined]
        served = _greedy(client, "hot")
        hf = HFBackend(str(tiny_model_dir), adapter=str(second_adapter_dir)).generate(
            [ChatRequest([{"role": "user", "content": t}], {"temperature": 0, "max_new_tokens": 12}) for t in TOPICS]
        )
        assert served == [r.text for r in hf]
        assert served != _greedy(client, "tuned")  # the new adapter answers, not the one loaded at start
    finally:
        unload_lora("hot", server, api_key_env="SERVE_TEST_KEY")
    with pytest.raises(openai.NotFoundError, match="hot") as caught:
        _reply(client, model="hot")
    assert caught.value.code == "model_not_found"
    assert [m.id for m in client.models.list()] == ["base", "tuned"]
    assert _reply(client, model="tuned", max_tokens=8) == expected["tuned"]


def test_bad_adapter_loads_are_4xx_naming_the_field(
    server: str,
    client: openai.OpenAI,
    tmp_path: Path,
    mismatched_adapter_dir: Path,
    random_adapter_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVE_TEST_KEY", API_KEY)
    before = _reply(client, model="tuned", max_tokens=8)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    root = server.removesuffix("/v1")
    (tmp_path / "empty").mkdir()
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"lora_name": "x", "lora_path": str(tmp_path / "missing")}, 404, "lora_path", "no adapter found"),
        ({"lora_name": "x", "lora_path": str(tmp_path / "empty")}, 400, "lora_path", "no adapter_config.json"),
        ({"lora_name": "tuned", "lora_path": str(random_adapter_dir)}, 400, "lora_name", "already been loaded"),
        ({"lora_name": "base", "lora_path": str(random_adapter_dir)}, 400, "lora_name", "the base model's name"),
        ({"lora_name": "x", "lora_path": str(mismatched_adapter_dir)}, 400, "lora_path", "does not fit"),
        (
            {"lora_name": "tuned", "lora_path": str(mismatched_adapter_dir), "load_inplace": True},
            400,
            "lora_path",
            "does not fit",
        ),
        ({"lora_name": "v1.2", "lora_path": str(random_adapter_dir)}, 400, "lora_name", "contains '.'"),
        ({"lora_name": "x"}, 400, "lora_path", "Field required"),
    ]
    for body, status, field, needle in cases:
        response = httpx.post(f"{root}/v1/load_lora_adapter", json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == field and needle in error["message"], (body, error)
    gone = httpx.post(f"{root}/v1/unload_lora_adapter", json={"lora_name": "nope"}, headers=headers)
    assert gone.status_code == 404 and "'nope' cannot be found" in gone.json()["error"]["message"]
    assert httpx.post(f"{root}/v1/load_lora_adapter", json=cases[2][0]).status_code == 401  # no key
    assert [m.id for m in client.models.list()] == ["base", "tuned"]
    with pytest.raises(ShapingError, match=r"HTTP 400: lora_path: the adapter at .* does not fit"):
        apply_lora(mismatched_adapter_dir, server, "x", api_key_env="SERVE_TEST_KEY")
    assert [m.id for m in client.models.list()] == ["base", "tuned"]
    assert _reply(client, model="tuned", max_tokens=8) == before  # the failed loads changed nothing
