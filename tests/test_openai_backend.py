"""The `openai` backend against real HTTP servers on 127.0.0.1: the project's own
`shaping.serve` over the tiny model, and a small aiohttp endpoint that fails on purpose."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from shaping.config import Config
from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference import ChatRequest
from shaping.inference.openai_compat import OpenAIBackend
from shaping.inference.redact import redact
from shaping.pipeline import Pipeline, TrainingSample, load_pipeline_class, model_request
from shaping.serve import running_server

from .conftest import REPO
from .test_pipeline import Chain


class Endpoint:
    """An OpenAI-compatible endpoint that echoes the last message; `fail_rate` of the requests
    get 429 (with Retry-After) or 500 instead; `status` forces one status for every request."""

    def __init__(
        self,
        fail_rate: float = 0.0,
        status: int | None = None,
        seed: int = 0,
        delay: float = 0.0,
        hold_after: int | None = None,
    ) -> None:
        self.fail_rate, self.status, self.random, self.delay = fail_rate, status, random.Random(seed), delay
        # answer `hold_after` requests, then hold every later one until the endpoint closes: a client
        # interrupted meanwhile cannot have finished first, however slow the machine
        self.hold_after = hold_after
        self.release: asyncio.Event | None = None
        self.requests = 0
        self.contents: list[str] = []  # the last message of every request answered
        self.failed = 0
        self.authorizations: list[str | None] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.authorizations.append(request.headers.get("Authorization"))
        body = await request.json()
        if self.status is not None:
            return web.json_response({"error": {"message": f"forced {self.status}"}}, status=self.status)
        if self.random.random() < self.fail_rate:
            self.failed += 1
            if self.random.random() < 0.5:
                return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0"})
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold_after is not None and len(self.contents) >= self.hold_after:
            assert self.release is not None
            await self.release.wait()
            return web.json_response({"error": {"message": "closing"}}, status=503)
        self.contents.append(body["messages"][-1]["content"])
        text = "echo: " + body["messages"][-1]["content"]
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            }
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    last: Endpoint | None = None  # the most recently started one (for tests that need its counters)

    def __enter__(self) -> str:
        Endpoint.last = self
        self.thread.start()
        self.ready.wait(10)
        return f"http://127.0.0.1:{self.port}/v1"

    def let_go(self) -> None:
        """Stop holding requests (hold_after): the held ones get 503, later ones their answers."""
        self.hold_after = None
        if self.release is not None:
            self.loop.call_soon_threadsafe(self.release.set)

    def __exit__(self, *exc: object) -> None:
        self.let_go()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


STAGE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def backend(url: str | list[str], **overrides: object) -> OpenAIBackend:
    spec = ModelSpec(backend="openai", model="echo-model", base_url=url, max_concurrency=16)
    spec.backoff_initial_s, spec.backoff_max_s = 0.01, 0.05
    for key, value in overrides.items():
        setattr(spec, key, value)
    return OpenAIBackend("judge", spec, {"temperature": 0.5, "max_new_tokens": 8, "min_new_tokens": 2})


def asks(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(n)]


def test_flaky_endpoint_loses_no_request() -> None:
    """30% of requests fail with 429/500: retried ones succeed, none is lost, order is kept."""
    with Endpoint(fail_rate=0.3) as url:
        replies = backend(url, max_retries=10).generate(asks(200))
    assert [r.text for r in replies] == [f"echo: q{i}" for i in range(200)]
    with Endpoint(fail_rate=0.3, seed=1) as url:
        replies = backend(url, max_retries=0).generate(asks(200))
    failed = [r for r in replies if not r.is_success]
    assert len(replies) == 200 and 30 < len(failed) < 100  # every request answered: a text or an error
    assert all(r.error and "gave up after 1 attempts" in r.error for r in failed)
    assert all(r.text == f"echo: q{i}" for i, r in enumerate(replies) if r.is_success)


def test_load_spreads_over_base_urls() -> None:
    with Endpoint() as first, Endpoint() as second:
        b = backend([first, second])
        assert len(b.generate(asks(20))) == 20
    assert b.urls == [first, second]


def test_base_url_without_a_scheme_names_the_key() -> None:
    with pytest.raises(ShapingError, match=r"models\.judge\.base_url='localhost:8000/v1': not an http\(s\) URL"):
        backend("localhost:8000/v1")


def test_options_are_translated() -> None:
    body = backend("http://127.0.0.1:1/v1").body(ChatRequest([{"role": "user", "content": "x"}], {"stop": ["."]}))
    assert body == {
        "model": "echo-model",
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0.5,
        "max_tokens": 8,
        "stop": ["."],
    }  # max_new_tokens renamed, min_new_tokens dropped


@pytest.mark.parametrize("status", [401, 404])
def test_auth_and_not_found_stop_the_run_without_the_key(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-123")
    with Endpoint(status=status) as url:
        endpoint_url = url
        with pytest.raises(ShapingError) as err:
            backend(url, api_key_env="JUDGE_KEY").generate(asks(3))
    message = str(err.value)
    assert f"HTTP {status}" in message and "echo-model" in message and endpoint_url in message
    assert "sk-secret-123" not in message


def test_missing_key_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with pytest.raises(ShapingError, match=r"models\.judge\.api_key_env: environment variable JUDGE_KEY is not set"):
        backend("http://127.0.0.1:1/v1", api_key_env="JUDGE_KEY")


SECRET = "pa55-w0rd-7f3e"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://shaping:{SECRET}@127.0.0.1:8000/v1", "'http://***@127.0.0.1:8000/v1'"),
        (f"https://{SECRET}@api.example.com/v1", "'https://***@api.example.com/v1'"),
        (f"http://user:{SECRET[:4]}/{SECRET[5:]}@127.0.0.1/v1", "'http://***@127.0.0.1/v1'"),  # '/' in it
        (f"shaping:{SECRET}@localhost:8000/v1", "'***@localhost:8000/v1'"),  # no scheme: still not printed
        (f"http://127.0.0.1/v1?api-version=2&api_key={SECRET}", "'http://127.0.0.1/v1?api-version=2&api_key=***'"),
    ],
)
def test_credentials_in_base_url_are_refused_without_printing_them(url: str, shown: str) -> None:
    with pytest.raises(ShapingError) as err:
        backend(url)
    message = str(err.value)
    assert message.startswith(f"models.judge.base_url={shown}: the URL carries ")
    assert "models.judge.api_key_env" in message
    assert SECRET not in message and SECRET[:4] not in message and SECRET[5:] not in message


def test_an_at_sign_in_the_path_is_no_credential_and_a_broken_url_is_named() -> None:
    assert backend("https://127.0.0.1:8000/v1/models/org@v2").urls == ["https://127.0.0.1:8000/v1/models/org@v2"]
    with pytest.raises(
        ShapingError, match=r"models.judge.base_url='http://\*\*\*': not a valid URL \(Invalid IPv6 URL\)"
    ):
        backend("http://[::1:8000/v1")


def test_secret_looking_keys_are_masked_and_others_kept() -> None:
    engine_options = {
        "hf_token": "hf_abc",
        "tensor_parallel_size": 2,
        "max_num_batched_tokens": 8192,
        "tokenizer_mode": "auto",
        "hf_overrides": {"headers": {"Authorization": "Bearer x", "x-api-key": "k"}, "clientSecret": "s"},
        "stop_token_ids": [1, 2],
        "download": [{"password": "p", "path": "/models"}],
        "use_auth_token": None,  # unset: nothing to hide
    }
    assert redact(engine_options) == {
        "hf_token": "***",
        "tensor_parallel_size": 2,
        "max_num_batched_tokens": 8192,
        "tokenizer_mode": "auto",
        "hf_overrides": {"headers": {"Authorization": "***", "x-api-key": "***"}, "clientSecret": "***"},
        "stop_token_ids": [1, 2],
        "download": [{"password": "***", "path": "/models"}],
        "use_auth_token": None,
    }
    assert engine_options["hf_token"] == "hf_abc"  # a copy: vLLM still gets the token


class Asker(Pipeline):
    name = "asker"
    judge = Pipeline.model_dep("judge")

    def run(self) -> list[TrainingSample]:
        return self.run_task(self.ask, records=[{"id": str(i)} for i in range(10)])

    def ask(self, record: dict[str, Any]) -> Any:
        reply = yield model_request([{"role": "user", "content": f"q{record['id']}"}], model=self.judge)
        return TrainingSample(id=record["id"], messages=[{"role": "assistant", "content": reply.get_text()}])


def test_no_secret_reaches_logs_errors_or_files(
    cfg: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A run against a real endpoint that fails half the requests, with a key from the environment
    and a token among the registry options: the key goes out in the header and the token in the
    request body, and neither appears in a log line, an error, the output, the manifest or the cache."""
    key, token = "sk-test-9f8e7d6c", "tok-5a4b3c2d"
    monkeypatch.setenv("SHAPING_TEST_KEY", key)
    cfg.synth.limit, cfg.synth.cache_dir, cfg.synth.max_failure_rate = None, str(tmp_path / "cache"), 1.0
    judge = cfg.models["judge"]
    judge.backend, judge.model, judge.api_key_env, judge.max_retries = "openai", "echo", "SHAPING_TEST_KEY", 0
    judge.sysprompt, judge.sysprompt_file, judge.options = None, None, {"session_token": token}
    caplog.set_level(logging.DEBUG)
    with Endpoint(fail_rate=0.5, seed=3) as url:
        judge.base_url = url
        result = Asker(cfg, output_dir=tmp_path / "out").execute()
        endpoint = Endpoint.last
    assert endpoint is not None and endpoint.authorizations == [f"Bearer {key}"] * 10  # the key was used
    assert 0 < result.errors < 10  # some requests failed, and their errors name the endpoint
    errors = (tmp_path / "out" / "errors.jsonl").read_text()
    assert f"at {url}): HTTP " in errors
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model_deps"]["judge"]["fingerprint"]["options"]["session_token"] == "***"
    out, err = capfd.readouterr()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"samples.jsonl", "errors.jsonl", "manifest.json", "asker.sqlite"}
    for secret in (key, token):
        assert secret not in caplog.text and secret not in out and secret not in err
        assert not [p for p in written if secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_stage_refuses_a_password_in_base_url_and_prints_it_nowhere(tmp_path: Path) -> None:
    """`python src/synthesize.py` with credentials in the URL: exit 1 with one message naming the
    key and api_key_env, no request sent, and the password in no output, log or written file
    (Hydra's own copy of the command line, .hydra/overrides.yaml, is switched off here)."""
    with Endpoint() as url:
        endpoint = Endpoint.last
        with_password = url.replace("http://", f"http://shaping:{SECRET}@")
        command = [
            sys.executable,
            "src/synthesize.py",
            "pipeline=my_pipeline",
            f"synth.cache_dir={tmp_path / 'cache'}",
            "models.cubsfan-release-full.backend=openai",
            f"models.cubsfan-release-full.base_url={with_password}",
            "models.cubsfan-release-full.model=served",
            f"hydra.run.dir={tmp_path / 'run'}",
            "hydra.output_subdir=null",
        ]
        done = subprocess.run(command, cwd=REPO, env=STAGE_ENV, capture_output=True, text=True, timeout=300)
    assert endpoint is not None and endpoint.requests == 0
    printed = done.stdout + done.stderr
    assert done.returncode == 1, printed[-2000:]
    masked = url.replace("http://", "http://***@")
    assert f"synthesize failed: models.cubsfan-release-full.base_url='{masked}': the URL carries" in printed
    assert "Traceback" not in printed and SECRET not in printed
    record = json.loads((tmp_path / "run" / "data/synth/my_pipeline/run.json").read_text())
    assert record["exit_status"] == "failed" and "models.cubsfan-release-full.api_key_env" in record["error"]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in written)  # Hydra's log file of the run
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]


def test_connection_refused_fails_each_request_after_retries() -> None:
    replies = backend("http://127.0.0.1:9/v1", max_retries=1).generate(asks(2))
    assert all(not r.is_success and "gave up after 2 attempts" in (r.error or "") for r in replies)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[str]:
    with running_server(tiny_model_dir) as url:
        yield url


def test_a_server_started_without_runtime_lora_updating_refuses_apply_lora(
    served: str, random_adapter_dir: Path
) -> None:
    from shaping.inference.apply import apply_lora

    with pytest.raises(ShapingError, match="start it with --allow-runtime-lora-updating"):
        apply_lora(random_adapter_dir, served, "tuned")
    assert len(httpx.get(f"{served}/models").json()["data"]) == 1  # the base alone: nothing was loaded


def test_pipeline_runs_against_the_projects_server(cfg: Config, served: str, tmp_path: Path) -> None:
    cfg.synth.limit = None
    teacher = cfg.models["teacher"]
    served_name = httpx.get(f"{served}/models").json()["data"][0]["id"]
    teacher.backend, teacher.base_url, teacher.model = "openai", served, served_name
    teacher.sysprompt = "You are Juniper."  # the identity document is longer than the tiny model's context
    before = httpx.get(served.removesuffix("/v1") + "/health").json()["requests"]
    result = Chain(cfg, output_dir=tmp_path).execute()
    assert result.samples == 3 and result.errors == 2  # the same records fail as with the hf backend
    served_requests = httpx.get(served.removesuffix("/v1") + "/health").json()["requests"] - before
    assert served_requests == result.manifest["requests_sent"] == 6  # identical requests are sent once
    first = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
    assert first["steps"][0]["messages"][0] == {"role": "system", "content": "You are Juniper."}  # injected
    assert all(step["error"] is None for step in first["steps"])


@pytest.mark.parametrize("backend_name", ["hf", "openai"])
@pytest.mark.parametrize("pipeline", ["my_pipeline", "identity_augmentation"])
def test_seed_examples_run_unchanged(
    cfg: Config, tiny_model_dir: Path, served: str, tmp_path: Path, pipeline: str, backend_name: str
) -> None:
    """Seed 001's MyPipeline and IdentityAugmentation, against local generation and the server."""
    cfg.synth.limit = None
    served_name = httpx.get(f"{served}/models").json()["data"][0]["id"]
    for name in ("judge", "cubsfan-release-full"):
        spec = cfg.models[name]
        spec.model, spec.max_new_tokens, spec.sysprompt = str(tiny_model_dir), 12, "You are Juniper."
        if backend_name == "openai":
            spec.backend, spec.base_url, spec.model = "openai", served, served_name
            # seeded as the hf backend is: unseeded, the module's shared server samples on from its
            # last state, and now and then the tiny judge lists no fact at all
            spec.options = {**spec.options, "seed": 0}
    cls = load_pipeline_class(pipeline, REPO / "pipelines")
    result = cls(cfg, output_dir=tmp_path).execute()
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert result.errors == 0 and len(rows) == result.samples > 0
    assert all(row["messages"][-1]["role"] == "assistant" for row in rows)
    steps_per_record = 1 if pipeline == "my_pipeline" else 2
    extra = 0 if pipeline == "my_pipeline" else 1  # the query() that extracts facts
    # every request answered once: sent, or (seeded, so identical requests get one answer) taken from
    # the cache or from an identical request in flight
    answered = result.manifest["requests_sent"] + result.manifest["cache_hits"] + result.manifest["shared"]
    assert answered == steps_per_record * len(rows) + extra
    assert all(len(row["steps"]) == steps_per_record for row in rows)
