"""The engine's scheduling against a real HTTP endpoint on 127.0.0.1 (aiohttp, delays per
request): no lockstep rounds, per-model concurrency, list answers in submission order, failure
threshold, run() errors, --no-cache and the stage's summary; and hf batching, deterministic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.pipeline import Pipeline, TrainingSample, cli_overrides, model_request

from .conftest import REPO
from .test_openai_backend import Endpoint
from .test_pipeline import Chain


class TimedEndpoint(Endpoint):
    """Echoes the last message after `delays[content]` seconds (default `delay`); records when
    each request started and ended, and the most requests in flight at once per model."""

    def __init__(self, delays: dict[str, float] | None = None, delay: float = 0.02, **kwargs: Any) -> None:
        super().__init__(delay=delay, **kwargs)
        self.delays = delays or {}
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        model, content = body["model"], body["messages"][-1]["content"]
        self.requests += 1
        self.in_flight[model] += 1
        self.max_in_flight[model] = max(self.max_in_flight[model], self.in_flight[model])
        self.started[content] = time.monotonic()
        await asyncio.sleep(self.delays.get(content, self.delay))
        self.ended[content] = time.monotonic()
        self.in_flight[model] -= 1
        self.contents.append(content)
        message = {"role": "assistant", "content": "echo: " + content}
        return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def serve_model(cfg: Config, name: str, url: str, concurrency: int) -> None:
    """Point registry entry `name` at the endpoint, served under its own name."""
    spec = cfg.models[name]
    spec.backend, spec.base_url, spec.model, spec.max_concurrency = "openai", url, name, concurrency
    spec.sysprompt, spec.sysprompt_file, spec.max_retries = None, None, 0
    cfg.synth.limit = None  # the smoke experiment's limit of 40 records


class TwoSteps(Pipeline):
    name = "two-steps"
    judge = Pipeline.model_dep("judge")
    records = 20

    def run(self) -> list[TrainingSample]:
        return self.run_task(self.ask_twice, records=[{"id": f"r{i}"} for i in range(self.records)])

    def ask_twice(self, record: dict[str, Any]) -> Any:
        first = yield model_request([{"role": "user", "content": f"{record['id']}-a"}], model=self.judge)
        second = yield model_request([{"role": "user", "content": f"{record['id']}-b"}], model=self.judge)
        reply = first.get_text() + " / " + second.get_text()
        return TrainingSample(id=record["id"], messages=[{"role": "assistant", "content": reply}])


def test_a_slow_request_holds_back_only_its_own_record(cfg: Config, tmp_path: Path) -> None:
    """r0's first answer takes 0.8 s; every other record runs both its steps meanwhile (in
    lockstep rounds, every second step would wait for it), with 4 requests in flight, not more."""
    with TimedEndpoint(delays={"r0-a": 0.8}, delay=0.04) as url:
        endpoint = Endpoint.last
        assert isinstance(endpoint, TimedEndpoint)
        serve_model(cfg, "judge", url, concurrency=4)
        result = TwoSteps(cfg, output_dir=tmp_path).execute()
    assert result.samples == 20 and result.manifest["requests_sent"] == 40
    slow_end = endpoint.ended["r0-a"]
    others = [c for c in endpoint.started if not c.startswith("r0-")]
    assert all(endpoint.ended[c] < slow_end for c in others)  # 38 requests came and went meanwhile
    assert endpoint.started["r0-b"] > slow_end  # a record's steps stay in order
    assert endpoint.max_in_flight["judge"] == 4
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20)]  # input order, not finishing order
    assert rows[0]["messages"][0]["content"] == "echo: r0-a / echo: r0-b"


class PerModel(Pipeline):
    """Each record asks two models at once: a list yield, answered in submission order."""

    name = "per-model"
    judge = Pipeline.model_dep("judge")
    teacher = Pipeline.model_dep("teacher")

    def run(self) -> list[TrainingSample]:
        return self.run_task(self.ask_both, records=[{"id": str(i)} for i in range(24)])

    def ask_both(self, record: dict[str, Any]) -> Any:
        replies = yield [
            model_request([{"role": "user", "content": f"slow {record['id']}"}], model=self.judge),
            model_request([{"role": "user", "content": f"fast {record['id']}"}], model=self.teacher),
        ]
        return TrainingSample(
            id=record["id"], messages=[{"role": "assistant", "content": "|".join(r.get_text() for r in replies)}]
        )


def test_each_model_has_its_own_concurrency_and_lists_keep_submission_order(cfg: Config, tmp_path: Path) -> None:
    delays = {f"slow {i}": 0.06 for i in range(24)} | {f"fast {i}": 0.005 for i in range(24)}
    with TimedEndpoint(delays=delays) as url:
        endpoint = Endpoint.last
        assert isinstance(endpoint, TimedEndpoint)
        serve_model(cfg, "judge", url, concurrency=2)
        serve_model(cfg, "teacher", url, concurrency=5)
        PerModel(cfg, output_dir=tmp_path).execute()
    assert endpoint.max_in_flight == {"judge": 2, "teacher": 5}
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    # the fast answer arrives first, the list holds the slow one first, as submitted; steps too
    assert all(endpoint.ended[f"fast {i}"] < endpoint.ended[f"slow {i}"] for i in range(24))
    assert rows[5]["messages"][0]["content"] == "echo: slow 5|echo: fast 5"
    assert [s["model"] for s in rows[5]["steps"]] == ["judge", "teacher"]


class OneStep(Pipeline):
    name = "one-step"
    judge = Pipeline.model_dep("judge")

    def run(self) -> list[TrainingSample]:
        return self.run_task(self.ask, records=[{"id": str(i)} for i in range(60)])

    def ask(self, record: dict[str, Any]) -> Any:
        reply = yield model_request([{"role": "user", "content": f"q{record['id']}"}], model=self.judge)
        return TrainingSample(id=record["id"], messages=[{"role": "assistant", "content": reply.get_text()}])


def test_flaky_endpoint_every_record_a_sample_or_an_error_and_the_threshold(cfg: Config, tmp_path: Path) -> None:
    """30% of requests fail with 429/500 and are not retried: each record ends as a sample or an
    __ERROR__ (api_error); past synth.max_failure_rate the run fails after writing both files."""
    with Endpoint(fail_rate=0.3, seed=3) as url:
        serve_model(cfg, "judge", url, concurrency=8)
        cfg.synth.max_failure_rate = 0.5
        result = OneStep(cfg, output_dir=tmp_path / "lenient").execute()
        cfg.synth.cache = False  # fresh calls: another 30% fail
        cfg.synth.max_failure_rate = 0.05
        with pytest.raises(ShapingError, match=r"records failed \(\d+%\), more than synth.max_failure_rate=0.05"):
            OneStep(cfg, output_dir=tmp_path / "strict").execute()
    samples = {json.loads(line)["id"] for line in (tmp_path / "lenient" / "samples.jsonl").open()}
    errors = [json.loads(line)["__ERROR__"] for line in (tmp_path / "lenient" / "errors.jsonl").open()]
    failed = {e["input_data"]["id"] for e in errors}
    assert samples | failed == {str(i) for i in range(60)} and not samples & failed  # none lost, none twice
    assert 5 < len(failed) < 35 and {e["error"] for e in errors} == {"api_error"}
    assert all(len(e["steps"]) == 1 and e["steps"][0]["error"] for e in errors)  # the failed request kept
    assert result.manifest["errors_by_type"] == {"api_error": len(failed)}
    assert result.manifest["failure_rate"] == pytest.approx(len(failed) / 60, abs=1e-4)
    assert (tmp_path / "strict" / "errors.jsonl").is_file()  # written before the run failed


class ExtractFirst(Pipeline):
    """run() makes a query() whose answer it needs: a failed one stops the run."""

    name = "extract-first"
    judge = Pipeline.model_dep("judge")

    def run(self) -> list[TrainingSample]:
        facts = self.query(self.judge, [{"role": "user", "content": "list the facts"}]).get_text()
        return self.run_task(self.never, records=[{"id": "0", "facts": facts}])

    def never(self, record: dict[str, Any]) -> Any:
        yield model_request([{"role": "user", "content": "unused"}], model=self.judge)
        raise AssertionError("unreachable")


def test_a_pipeline_error_in_run_is_a_stage_error(cfg: Config, tmp_path: Path) -> None:
    with Endpoint(status=500) as url:
        serve_model(cfg, "judge", url, concurrency=1)
        with pytest.raises(ShapingError, match=r"extract-first: run\(\) stopped \(api_error\): request to judge"):
            ExtractFirst(cfg, output_dir=tmp_path).execute()


def test_a_task_that_is_not_a_generator_is_named(cfg: Config, tmp_path: Path) -> None:
    class Plain(Pipeline):
        name = "plain"

        def run(self) -> list[TrainingSample]:
            return self.run_task(self.make, records=[{"id": "0"}])

        def make(self, record: dict[str, Any]) -> TrainingSample:
            return TrainingSample(id=record["id"], messages=[])

    with pytest.raises(ShapingError, match=r"run_task\('make'\): a task must be a generator"):
        Plain(cfg, output_dir=tmp_path).execute()


def test_cli_flags_become_overrides() -> None:
    assert cli_overrides(["pipeline=x", "--no-cache"]) == ["pipeline=x", "synth.cache=false"]
    with pytest.raises(ShapingError, match="unknown option --nocache"):
        cli_overrides(["--nocache"])


def test_hf_requests_that_arrive_together_share_one_generate_call(cfg: Config, tmp_path: Path) -> None:
    """Chain's records send their first requests together (one batch of 4), then their pairs
    (2 distinct requests, the other 6 wait on them): two generate() calls in all. Sampled
    replies repeat with a fresh cache: the batches are formed the same way every run."""
    outputs = []
    for run in range(2):
        cfg.synth.cache_dir = str(tmp_path / f"cache{run}")
        pipeline = Chain(cfg, output_dir=tmp_path / str(run))
        result = pipeline.execute()
        assert pipeline.registry.async_backend("teacher").calls == 2  # type: ignore[attr-defined]
        assert result.manifest["requests_sent"] == 6 and result.manifest["shared"] == 6
        outputs.append([json.loads(line)["messages"] for line in (tmp_path / str(run) / "samples.jsonl").open()])
    assert outputs[0] == outputs[1]


def test_an_openai_model_and_a_local_hf_model_in_one_task(cfg: Config, tmp_path: Path) -> None:
    """The judge answers over HTTP while the teacher generates locally (in its worker thread):
    each record's list holds both answers, in order; the teacher's 24 prompts went out in
    batches of at most its max_concurrency."""
    with TimedEndpoint(delay=0.01) as url:
        serve_model(cfg, "judge", url, concurrency=4)
        teacher = cfg.models["teacher"]
        teacher.max_concurrency, teacher.max_new_tokens, teacher.sysprompt_file = 8, 4, None
        pipeline = PerModel(cfg, output_dir=tmp_path)
        result = pipeline.execute()
    assert result.samples == 24 and result.errors == 0
    calls = pipeline.registry.async_backend("teacher").calls  # type: ignore[attr-defined]
    assert 3 <= calls <= 6  # 24 prompts, at most 8 a call: 3 when every batch is full
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert all(r["messages"][0]["content"].startswith(f"echo: slow {r['id']}|") for r in rows)
    assert [s["model"] for s in rows[0]["steps"]] == ["judge", "teacher"]


STAGE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_stage_summary_no_cache_flag_and_status(tmp_path: Path) -> None:
    """`python src/synthesize.py` by hand against an endpoint: the summary line, a re-run from the
    cache, `--no-cache` sending again, and `--status` reading the three manifests."""
    with TimedEndpoint() as url:
        endpoint = Endpoint.last
        common = [
            "pipeline=my_pipeline",
            f"synth.cache_dir={tmp_path / 'cache'}",
            "models.cubsfan-release-full.backend=openai",
            f"models.cubsfan-release-full.base_url={url}",
            "models.cubsfan-release-full.model=served",
        ]
        runs = []
        for n, flags in enumerate([[], [], ["--no-cache"]]):
            command = [sys.executable, "src/synthesize.py", *common, f"hydra.run.dir={tmp_path / f'run{n}'}", *flags]
            done = subprocess.run(command, cwd=REPO, env=STAGE_ENV, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-2000:]
            runs.append(json.loads((tmp_path / f"run{n}/data/synth/my_pipeline/manifest.json").read_text()))
        assert [(r["requests_sent"], r["cache_hits"]) for r in runs] == [(2, 0), (0, 2), (2, 0)]
        assert endpoint is not None and endpoint.requests == 4
        summary = "my-pipeline: 2 samples, 0 failed of 2 records; 2 requests: 2 sent (0 failed), 0 from the cache"
        assert summary in done.stdout + done.stderr  # Hydra logs to stdout
    status = subprocess.run(
        [sys.executable, "src/synthesize.py", "--status", f"paths.synth_dir={tmp_path}/none"],
        cwd=REPO,
        env=STAGE_ENV,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stderr
    assert "identity_distillation" in status.stdout and "MISSING" in status.stdout


@pytest.mark.slow
def test_throughput_benchmark_runs_small() -> None:
    """bench/synth_throughput.py end to end with 150 records: the three clients, one table."""
    done = subprocess.run(
        [sys.executable, "bench/synth_throughput.py", "--records", "150", "--concurrency", "16"],
        cwd=REPO,
        env=STAGE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert [r.split(" | ")[0] for r in rows] == [
        "| this engine (cache on)",
        "| asyncio + openai.AsyncOpenAI",
        "| aiohttp + orjson",
    ]
    assert all(float(r.split(" | ")[1].replace(",", "")) > 0 for r in rows)
