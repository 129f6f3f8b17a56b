"""The response cache and the journal: a re-run re-sends nothing answered; after a SIGKILL halfway a
re-run recomputes no finished record and re-sends no stored answer."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.pipeline import Pipeline, TrainingSample, model_request
from shaping.pipeline.engine import COMMIT_INTERVAL_S

from .conftest import REPO
from .test_openai_backend import Endpoint
from .test_pipeline import Chain


def test_rerun_answers_from_the_cache_and_no_cache_sends_again(cfg: Config, tmp_path: Path) -> None:
    cfg.synth.limit = None
    first = Chain(cfg, output_dir=tmp_path / "1").execute()
    again = Chain(cfg, output_dir=tmp_path / "2").execute()
    assert first.manifest["requests_sent"] == 6 and first.manifest["cache_hits"] == 0
    assert again.manifest["requests_sent"] == 0 and again.manifest["cache_hits"] == 12
    texts = [
        [m["content"] for r in map(json.loads, (tmp_path / d / "samples.jsonl").open()) for m in r["messages"]]
        for d in "12"
    ]
    assert texts[0] == texts[1]  # same answers, none sent
    cfg.synth.cache = False  # --no-cache: fresh calls
    fresh = Chain(cfg, output_dir=tmp_path / "3").execute()
    assert fresh.manifest["requests_sent"] == 6 and fresh.manifest["cache_hits"] == 0


SCRIPT = """
import sys
from shaping.config import compose
from shaping.pipeline import Pipeline, TrainingSample, model_request

class Many(Pipeline):
    name = "many"
    judge = Pipeline.model_dep("judge")

    def run(self):
        return self.run_task(self.task, records=[{"id": str(i)} for i in range(40)])

    def task(self, record):
        first = yield model_request([{"role": "user", "content": "q" + record["id"]}], model=self.judge)
        second = yield model_request([{"role": "user", "content": first.get_text() + "!"}], model=self.judge)
        return TrainingSample(id=record["id"], messages=[
            {"role": "user", "content": "q" + record["id"]}, {"role": "assistant", "content": second.get_text()}])

Many(compose(sys.argv[2:]), output_dir=sys.argv[1]).execute()
"""


def _record_id(content: str) -> str:
    """The record a request belongs to: its first step asks "q<id>", its second "echo: q<id>!"."""
    return content.removeprefix("echo: ").removeprefix("q").removesuffix("!")


def test_sigkill_halfway_then_rerun_resends_only_unanswered_requests(tmp_path: Path) -> None:
    script = tmp_path / "many.py"
    script.write_text(SCRIPT)
    cache_dir = tmp_path / "cache"
    with Endpoint(delay=0.03) as url:
        endpoint = Endpoint.last  # type: ignore[attr-defined]
        overrides = [
            "+experiment=smoke",
            "synth.limit=null",
            f"synth.cache_dir={cache_dir}",
            "models.judge.backend=openai",
            f"models.judge.base_url={url}",
            "models.judge.model=echo",
            "models.judge.max_concurrency=4",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        run = [sys.executable, str(script), str(tmp_path / "out1"), *overrides]
        process = subprocess.Popen(run, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while len(endpoint.contents) < 60 and time.time() < deadline and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode() if process.stderr else ""
        time.sleep(0.5)  # requests in flight at the kill finish at the server: they count as answered
        answered_before = list(endpoint.contents)
        with sqlite3.connect(cache_dir / "many.sqlite") as db:
            # what each stored answer answered: the endpoint replies "echo: <last message>"
            cached = {row[0].removeprefix("echo: ") for row in db.execute("SELECT text FROM responses")}
        stored = len(cached)
        assert 40 < len(answered_before) < 80  # killed during the second step
        # lost: the requests in flight, and the answers of the last commit interval (4 per 0.03 s at most)
        assert len(answered_before) - stored <= 4 + math.ceil(COMMIT_INTERVAL_S / 0.03 * 4)
        (journal,) = cache_dir.glob("many.*.journal.jsonl")
        finished = {json.loads(line)["sample"]["id"] for line in journal.read_text().splitlines()}
        assert 10 <= len(finished) < 40  # records finished before the kill, appended as they finished

        again = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "out2"), *overrides], cwd=REPO, env=env, capture_output=True
        )
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        resent = endpoint.contents[len(answered_before) :]
    assert not set(resent) & cached  # no request whose answer was stored is sent again
    assert not {_record_id(c) for c in resent} & finished  # nothing sent again for a finished record
    manifest = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    # finished records come from the journal, not recomputed: their answers are not even looked up;
    # every request of the other records is answered from the cache or sent, once
    assert manifest["resumed"] == len(finished)
    assert manifest["requests_sent"] == len(resent)
    assert manifest["cache_hits"] + manifest["requests_sent"] == 80 - 2 * len(finished)
    assert manifest["cache_hits"] == len({c for c in cached if _record_id(c) not in finished})
    rows = [json.loads(line) for line in (tmp_path / "out2" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(40)]  # complete, in order, no duplicate
    assert rows[7]["messages"][-1]["content"] == "echo: echo: q7!"
    assert not journal.exists()  # a finished run leaves no journal


def test_ctrl_c_is_one_message_and_the_rerun_resumes(tmp_path: Path) -> None:
    """SIGINT halfway: exit 1 with a line saying how to resume (no traceback), the journal kept;
    the re-run takes the finished records from it and completes the output."""
    script = tmp_path / "many.py"
    # Ctrl-C as in a terminal: a command started in the background by a non-interactive shell
    # (`make test &`, nohup, some CI runners) inherits SIGINT ignored, and Python keeps it so
    script.write_text("import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + SCRIPT)
    cache_dir = tmp_path / "cache"
    with Endpoint(delay=0.03, hold_after=60) as url:  # requests after the 60th wait for the SIGINT
        endpoint = Endpoint.last
        assert endpoint is not None
        overrides = [
            "+experiment=smoke",
            "synth.limit=null",
            f"synth.cache_dir={cache_dir}",
            "models.judge.backend=openai",
            f"models.judge.base_url={url}",
            "models.judge.model=echo",
            "models.judge.max_concurrency=4",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        run = [sys.executable, str(script), str(tmp_path / "out1"), *overrides]
        process = subprocess.Popen(run, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while len(endpoint.contents) < 60 and time.time() < deadline and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 1, stderr
        assert "Traceback" not in stderr
        assert "many: interrupted;" in stderr and "holds the finished records. Run again to resume" in stderr
        (journal,) = cache_dir.glob("many.*.journal.jsonl")
        finished = len(journal.read_text().splitlines())
        assert finished >= 10
        endpoint.let_go()
        again = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "out2"), *overrides], cwd=REPO, env=env, capture_output=True
        )
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        assert len(endpoint.contents) <= 80 + 4  # nothing answered and stored before Ctrl-C was sent again
    manifest = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    assert manifest["resumed"] == finished and manifest["samples"] == 40


class TwoRounds(Pipeline):
    """The same task twice over the same records (a second round with other settings); `interrupt`
    stops the run after both rounds finished, before the outputs are written, as a Ctrl-C would."""

    name = "two-rounds"
    judge = Pipeline.model_dep("judge")
    interrupt = True

    def run(self) -> list[TrainingSample]:
        records = [{"id": str(i)} for i in range(4)]
        self.round = "first"
        first = self.run_task(self.ask, records=records)
        self.round = "second"
        second = self.run_task(self.ask, records=records)
        if self.interrupt:
            raise KeyboardInterrupt
        return first + second

    def ask(self, record: dict[str, Any]) -> Any:
        reply = yield model_request([{"role": "user", "content": f"{self.round} {record['id']}"}], model=self.judge)
        return TrainingSample(
            id=f"{self.round}-{record['id']}", messages=[{"role": "assistant", "content": reply.get_text()}]
        )


def test_a_task_run_twice_resumes_each_round_from_its_own_journal_entries(cfg: Config, tmp_path: Path) -> None:
    cfg.synth.limit, cfg.synth.cache_dir = None, str(tmp_path / "cache")
    judge = cfg.models["judge"]
    judge.backend, judge.model, judge.sysprompt, judge.sysprompt_file = "openai", "echo", None, None
    with Endpoint() as url:
        judge.base_url = url
        endpoint = Endpoint.last
        with pytest.raises(ShapingError, match="interrupted"):
            TwoRounds(cfg, output_dir=tmp_path / "out").execute()
        assert endpoint is not None and endpoint.requests == 8
        (journal,) = (tmp_path / "cache").glob("two-rounds.*.journal.jsonl")
        assert len(journal.read_text().splitlines()) == 8, "both rounds' records, journaled apart"
        TwoRounds.interrupt = False
        try:
            result = TwoRounds(cfg, output_dir=tmp_path / "out").execute()
        finally:
            TwoRounds.interrupt = True
        assert endpoint.requests == 8, "every record of both rounds came from the journal"
    assert result.manifest["resumed"] == 8
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    got = {r["id"]: r["messages"][-1]["content"] for r in rows}
    assert got == {f"{r}-{i}": f"echo: {r} {i}" for r in ("first", "second") for i in range(4)}
