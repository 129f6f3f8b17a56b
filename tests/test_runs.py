"""The runs service against the real DVC queue and worker: `python -m shaping.runs serve` (uvicorn on
127.0.0.1) over a copy of the built smoke repo, httpx as the client."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from .conftest import SMOKE, Service, copy_smoke_repo, running_service, sh

KEY = f"runs-test-{secrets.token_hex(8)}"  # what the service is started with; it must appear in no log or file


class Receiver:
    """A real local webhook endpoint: records each JSON body it accepts; answers 500 to its first request."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, object]] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.refused == 0:
                    receiver.refused += 1
                    self.send_response(500)
                else:
                    receiver.accepted.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/{secrets.token_hex(4)}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def service(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Receiver]]:
    """The service over a copy of the smoke repo whose conf/ sends every event to a local receiver (its URL
    from an environment variable); the queue's workers are stopped afterwards."""
    repo = copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("runs") / "repo")
    receiver = Receiver()
    conf = repo / "conf" / "config.yaml"
    hook = "  webhooks:\n    - url_env: RUNS_TEST_WEBHOOK\n      events: ['*']\n      max_per_minute: 600\n"
    conf.write_text(conf.read_text().replace("  webhooks: []\n", hook, 1))
    sh(repo, "git", "commit", "-qam", "a webhook")
    try:
        with running_service(repo, KEY, {"RUNS_TEST_WEBHOOK": receiver.url}) as server:
            yield server, receiver
    finally:
        receiver.server.shutdown()


def wait_for(client: httpx.Client, run_id: str, statuses: set[str], timeout: float = 400) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        if run["status"] in statuses:
            return dict(run)
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not reach {statuses}: {run}")


def sse(client: httpx.Client, path: str, until: str | None = None, timeout: float = 300) -> list[tuple[str, str]]:
    """The (event, data) pairs of a server-sent event stream, to its end or to the first data holding `until`."""
    events, event, deadline = [], "message", time.monotonic() + timeout
    with client.stream("GET", path, timeout=timeout) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, events[-20:]
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, line.removeprefix("data: ")))
                if until is not None and until in events[-1][1]:
                    break
                event = "message"
    return events


def worker_processes(repo: Path, workers: bool = False) -> dict[int, str]:
    """{pid: command line} of live processes running a run in `repo` (DVC's executor and its stages),
    and with `workers` DVC's queue workers too."""
    kinds = ("exec-run", "src/", *(("queue-worker",) if workers else ()))
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().split(") ")[-1][0]
        except (OSError, IndexError):
            continue
        if str(repo) in cwd and state != "Z" and any(kind in cmdline for kind in kinds):
            found[int(proc.name)] = cmdline
    return found


@pytest.mark.slow
def test_submit_follow_cancel_retry_and_refusals(service: tuple[Service, Receiver]) -> None:
    server, receiver = service
    url, repo, log = server.url, server.repo, server.log
    anonymous = httpx.Client(base_url=url, timeout=60)
    client = httpx.Client(base_url=url, timeout=120, headers={"X-Api-Key": KEY})

    # the health checks need no key; everything else does, and every response carries X-Request-ID
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    assert anonymous.get("/readyz").json()["status"] == "ready"
    refused = anonymous.get("/runs", headers={"X-Request-ID": "req-1"})
    assert refused.status_code == 401 and refused.headers["X-Request-ID"] == "req-1"
    assert refused.json()["code"] == "unauthorized" and refused.json()["request_id"] == "req-1"
    bearer = anonymous.get("/runs", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200 and bearer.headers["X-Request-ID"]
    assert anonymous.get("/events").status_code == 401

    # a bad key is a 422 naming it, and nothing is queued
    bad = client.post("/runs", json={"overrides": [SMOKE, "lora.rr=4"]})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_override"
    assert "lora.rr" in bad.json()["message"]
    assert client.post("/runs", json={"overrides": [SMOKE], "name": "no spaces"}).status_code == 422
    assert client.get("/runs").json() == {"runs": []}

    # three runs on one worker: the first succeeds, the second waits in the queue and is cancelled there,
    # the third (long, saving a checkpoint every 5 steps) is killed while it trains
    first = client.post("/runs", json={"overrides": [SMOKE, "lora.r=4"], "name": "r4"})
    assert first.status_code == 202 and first.json() == {**first.json(), "id": "r4", "status": "queued"}
    assert client.post("/runs", json={"overrides": [SMOKE, "lora.r=2"], "name": "r2"}).status_code == 202
    long = [SMOKE, "train.max_steps=2000", "train.save_steps=5"]
    assert client.post("/runs", json={"overrides": long, "name": "long"}).status_code == 202
    assert client.post("/runs", json={"overrides": [SMOKE], "name": "r4"}).json()["code"] == "name_taken"
    cancelled = client.post("/runs/r2/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.json()

    # the API restarted while r4 trains: the run goes on, and the new API follows it
    sse(client, "/runs/r4/logs/stream", until="Running stage 'train'")
    deadline = time.monotonic() + 60  # the service looks at its runs every second or two
    while (running := client.get("/runs/r4").json())["stage"] is None:
        assert time.monotonic() < deadline and running["status"] == "running", running
        time.sleep(0.2)
    assert running["stage"] in ("train", "evaluate") and running["heartbeat"]["time"], running
    server.stop()
    server.start()
    run = wait_for(client, "r4", {"succeeded", "failed"})
    assert run["status"] == "succeeded", client.get("/runs/r4/logs").json()
    assert run["stage"] is None and run["overrides"] == [SMOKE, "lora.r=4"]
    # its params and metrics are the experiment's, as `dvc exp show` and its commit hold them
    assert run["params"]["params.yaml"]["lora"]["r"] == 4  # type: ignore[index]
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    exp = next(e for b in shown for g in b.get("experiments") or [] for e in g["revs"] if e.get("name") == "r4")
    committed = json.loads(sh(repo, "git", "show", f"{exp['rev']}:eval/metrics.json").stdout)
    assert run["metrics"]["eval/metrics.json"] == committed  # type: ignore[index]
    assert committed["tuned"]["loss"] > 0

    # the training history (DVCLive), as the experiment commit holds it
    history = client.get("/runs/r4/metrics").json()["history"]
    logged = sh(repo, "git", "show", f"{exp['rev']}:dvclive/train/plots/metrics/loss.tsv").stdout.splitlines()
    expected = [{"step": int(row.split("\t")[0]), "value": float(row.split("\t")[1])} for row in logged[1:]]
    assert expected and history["loss"] == expected
    assert [p["step"] for p in history["learning_rate"]] == [p["step"] for p in expected]

    lines = client.get("/runs/r4/logs").json()["lines"]
    assert any("Running stage 'train'" in line for line in lines)
    assert client.get("/runs/r4/logs", params={"tail": 3}).json()["lines"] == lines[-3:]

    # a finished run's stream replays its output, then ends with its status
    replay = sse(client, "/runs/r4/logs/stream")
    assert [data for event, data in replay if event == "end"] == ["succeeded"]
    assert any("Running stage 'train'" in data for _, data in replay)

    # its events, in order: queued, started, its stages, training progress, eval, succeeded
    events = [json.loads(data) for _, data in sse(client, "/runs/r4/events")]
    types = [e["type"] for e in events]
    assert types[:2] == ["run.queued", "run.started"] and types[-1] == "run.succeeded", types
    assert all(e["v"] == 1 and e["run"] == "r4" and e["time"] for e in events)
    stages = [e["data"]["stage"] for e in events if e["type"] == "stage.started"]
    assert stages[-2:] == ["train", "evaluate"], stages
    assert types.index("stage.started") < types.index("train.progress") < types.index("eval.completed")
    progress = [e["data"] for e in events if e["type"] == "train.progress"]
    assert [p["step"] for p in progress] == [p["step"] for p in expected]
    assert [p["loss"] for p in progress] == [p["value"] for p in expected]
    evaluated = next(e["data"] for e in events if e["type"] == "eval.completed")
    assert evaluated["tuned_loss"] == committed["tuned"]["loss"]

    # its outputs: listed with sizes and hashes from its commit's dvc.lock; the adapter downloads and loads
    artifacts = {a["path"]: a for a in client.get("/runs/r4/artifacts").json()["artifacts"]}
    lock = sh(repo, "git", "show", f"{exp['rev']}:dvc.lock").stdout
    assert artifacts["models/adapter"]["kind"] == "dir" and artifacts["models/adapter"]["md5"] in lock
    download = client.get("/runs/r4/artifacts/models/adapter")
    assert download.status_code == 200 and download.headers["content-type"] == "application/x-tar"
    adapter = repo.parent / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        tar.extractall(adapter, filter="data")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(repo / "models" / "base"), adapter / "adapter"
    )
    assert tuned.peft_config["default"].r == 4
    # its model answers over HTTP as the CLI's generate and score code does on the downloaded adapter
    from shaping.scratch.generation import generate, score
    from shaping.scratch.runs import load_model

    local = load_model(repo / "models" / "base", adapter / "adapter", "cpu")
    options = {"max_new_tokens": 12, "temperature": 0.8, "seed": 3, "num_return_sequences": 2}
    answered = client.post("/runs/r4/generate", json={"chat": "Who are you?", **options})
    assert answered.status_code == 200 and answered.json()["status"] == "succeeded", answered.json()
    prompt = answered.json()["prompt"]
    assert "Who are you?" in prompt
    expected_texts = [g.text for g in generate(local.model, local.tokenizer, prompt, **options)]  # type: ignore[arg-type]
    assert answered.json()["outputs"] == expected_texts and len(answered.json()["steps"]) == 2
    scored = client.post("/runs/r4/score", json={"text": "I keep a seed library.", "detail_level": "per_token"})
    here = score(local.model, local.tokenizer, "I keep a seed library.", detail_level="per_token", top_k=5)
    assert scored.json()["loss"] == pytest.approx(here.loss, rel=1e-6)
    assert len(scored.json()["per_token"]) == here.tokens
    assert client.post("/runs/r4/generate", json={"max_new_tokens": 4}).json()["code"] == "invalid_request"
    too_long = client.post("/runs/r4/generate", json={"prompt_text": "x", "max_new_tokens": 999})
    assert too_long.status_code == 422 and too_long.json()["message"].startswith("max_new_tokens"), too_long.json()
    single = client.get("/runs/r4/artifacts/eval/metrics.json")
    assert single.status_code == 200 and json.loads(single.content) == committed
    for outside in ("dvc.yaml", "models/adapter/../../dvc.yaml", "..%2F..%2Fetc%2Fpasswd", "models/adapter/nope"):
        assert client.get(f"/runs/r4/artifacts/{outside}").status_code == 404, outside

    # the long run: killed while it trains, once it has saved a checkpoint; no process of its is left
    saved = json.loads(sse(client, "/runs/long/events", until="checkpoint.saved")[-1][1])
    assert saved["type"] == "checkpoint.saved", saved
    deadline = time.monotonic() + 120  # its loss curve gains points while it trains
    while not client.get("/runs/long/metrics").json()["history"].get("loss"):
        assert time.monotonic() < deadline, client.get("/runs/long").json()
        time.sleep(1)
    live = client.get("/runs/long").json()
    assert live["status"] == "running" and live["stage"] == "train" and live["heartbeat"]["type"], live
    killed = client.post("/runs/long/cancel")
    assert killed.status_code == 200 and killed.json()["status"] == "cancelled", killed.json()
    assert wait_for(client, "long", {"cancelled", "failed", "succeeded"}, timeout=60)["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while worker_processes(repo):
        assert time.monotonic() < deadline, worker_processes(repo)
        time.sleep(0.5)
    assert [json.loads(d)["type"] for _, d in sse(client, "/runs/long/events")][-1] == "run.cancelled"

    # retried, it resumes from that checkpoint; the queued-then-cancelled r2 retried
    # runs to the end: a second run with other overrides that succeeds
    assert client.post("/runs/r4/retry").json()["code"] == "not_retryable"
    again = client.post("/runs/long/retry")
    assert again.status_code == 202 and again.json()["id"] == "long-retry-1", again.json()
    retried = client.post("/runs/r2/retry", json={"name": "r2-again"})  # while long-retry-1 starts
    assert retried.status_code == 202 and retried.json()["id"] == "r2-again", retried.json()
    resumed = sse(client, "/runs/long-retry-1/logs/stream", until="resuming from")
    step = re.search(r"resuming from \S+ \(step (\d+)\)", resumed[-1][1])
    assert step is not None and int(step.group(1)) >= saved["data"]["step"] > 0, resumed[-3:]
    # the machine "crashes" under it: its worker and processes SIGKILLed; it reads failed, with the reason,
    # and the service starts a worker again for the run still queued
    for pid in worker_processes(repo, workers=True):
        os.kill(pid, signal.SIGKILL)
    lost = wait_for(client, "long-retry-1", {"failed", "succeeded", "cancelled"}, timeout=60)
    assert lost["status"] == "failed" and "killed" in str(lost["reason"]), lost
    last = json.loads(sse(client, "/runs/long-retry-1/events")[-1][1])
    assert last["type"] == "run.failed" and last["data"]["reason"] == lost["reason"], last
    second = wait_for(client, "r2-again", {"succeeded", "failed"})
    assert second["status"] == "succeeded", (second, client.get("/runs/r2-again/logs", params={"tail": 30}).json())
    assert second["params"]["params.yaml"]["lora"]["r"] == 2  # type: ignore[index]

    listed = {r["id"]: r["status"] for r in client.get("/runs").json()["runs"]}
    assert listed == {
        "r2-again": "succeeded",
        "long-retry-1": "failed",
        "long": "cancelled",
        "r4": "succeeded",
        "r2": "cancelled",
    }
    assert sorted(r["id"] for r in client.get("/runs", params={"status": "cancelled"}).json()["runs"]) == ["long", "r2"]
    assert client.get("/runs", params={"status": "nope"}).status_code == 422
    assert client.get("/runs/nope").status_code == 404
    assert client.get("/runs/nope/logs/stream").status_code == 404
    assert client.post("/runs/r4/cancel").json()["code"] == "not_cancellable"

    # the webhook got every event once (the first POST, refused with a 500, was retried), across the restart
    deadline = time.monotonic() + 30
    everything = [json.loads(d) for _, d in sse(client, "/runs/r2-again/events")]
    while everything[-1]["id"] not in {e["id"] for e in receiver.accepted}:
        assert time.monotonic() < deadline, receiver.accepted[-5:]
        time.sleep(0.5)
    ids = [e["id"] for e in receiver.accepted]
    assert receiver.refused == 1 and len(ids) == len(set(ids))
    assert [e["id"] for e in events] == [i for i in ids if i.startswith("r4/")]

    # the key is in no log and no file of the repository
    assert KEY not in log.read_text()
    for path in repo.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.stat().st_size < 5_000_000:
            assert KEY.encode() not in path.read_bytes(), path
            assert receiver.url.encode() not in path.read_bytes(), path


def test_a_folder_that_is_not_a_repository_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shaping.runs", "serve", "--repo", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and f"{tmp_path}: no dvc.yaml and conf/ here" in proc.stderr


def one_stage_repo(repo: Path) -> Path:
    """A git + DVC repository with one seconds-long stage (and the conf/ folder RunQueue asks for)."""
    (repo / "conf").mkdir(parents=True)
    (repo / "params.yaml").write_text("word: hello\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo ${word} > out.txt\n    params: [word]\n    outs: [out.txt]\n"
    )
    for cmd in (
        ("git", "init", "-q"),
        ("dvc", "init", "-q"),
        ("git", "add", "-A"),
        ("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"),
    ):
        sh(repo, *cmd)
    return repo


def test_finished_experiments_are_read_once_until_one_more_finishes(tmp_path: Path) -> None:
    """`dvc exp show` (seconds of CPU) runs again only when HEAD or an experiment ref changes."""
    from shaping.runs.queue import RunQueue

    repo = one_stage_repo(tmp_path / "repo")
    sh(repo, "dvc", "exp", "run", "-n", "first", "-S", "word=one")
    queue = RunQueue(repo)
    first = queue._experiments()
    assert [(e["name"], e["params"]["params.yaml"]["word"]) for e in first] == [("first", "one")]
    assert queue._experiments() is first  # read once
    sh(repo, "dvc", "exp", "run", "-n", "second", "-S", "word=two")
    again = queue._experiments()
    assert again is not first and sorted(e["name"] for e in again) == ["first", "second"]
    assert queue._experiments() is again


def test_a_submission_waits_while_another_dvc_process_holds_the_lock(tmp_path: Path) -> None:
    """DVC gives up on its lock after 3 s; a queue worker starting a run can hold it longer. A
    submission meeting it tries again until it is free, instead of failing (a 500 over HTTP)."""
    from shaping.runs.queue import RunQueue

    repo = one_stage_repo(tmp_path / "repo")
    hold = (
        "from dvc.repo import Repo; import time; r = Repo('.'); r.lock.lock(); "
        "print('held', flush=True); time.sleep(10); r.lock.unlock()"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = subprocess.run(
            [str(Path(sys.executable).parent / "dvc"), "exp", "run", "--queue", "-n", "plain"],
            cwd=repo,
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0 and "Unable to acquire lock" in refused.stderr  # DVC alone gives up
        start = time.monotonic()
        RunQueue(repo).dvc("exp", "run", "--queue", "-n", "waited")
        assert time.monotonic() - start > 1.0  # it waited for the holder
    finally:
        holder.wait(timeout=30)
    assert re.search(r"waited\s.*Queued", sh(repo, "dvc", "queue", "status").stdout)


def test_a_cancelled_run_dvc_still_lists_as_queued_reads_cancelled_and_leaves_the_queue(tmp_path: Path) -> None:
    """A cancel whose `dvc queue remove` lost a race (or a killed run's message back in the broker): DVC says
    Queued, the service says cancelled and removes it, and starts no worker that would run it again."""
    from shaping.runs.queue import RunQueue

    repo = one_stage_repo(tmp_path / "repo")
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "waiting")
    assert re.search(r"waiting\s.*Queued", sh(repo, "dvc", "queue", "status").stdout)
    queue = RunQueue(repo)  # (with no worker alive, reading a queued run starts one: not for a cancelled one)
    (queue.state_dir / "cancelled").mkdir(parents=True)
    (queue.state_dir / "cancelled" / "waiting").touch()
    assert [(r.id, r.status) for r in queue.runs()] == [("waiting", "cancelled")]
    assert "waiting" not in sh(repo, "dvc", "queue", "status").stdout
    assert queue.worker_count() == 0
