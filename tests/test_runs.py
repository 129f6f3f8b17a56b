"""The runs service against the real DVC queue and worker: `python -m shaping.runs serve` (uvicorn on
127.0.0.1) over a copy of the built smoke repo, httpx as the client."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import SMOKE, copy_smoke_repo, sh

KEY = f"runs-test-{secrets.token_hex(8)}"  # what the service is started with; it must appear in no log or file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(base URL, the repo, the service's log file); the queue's workers are stopped afterwards."""
    repo = copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("runs") / "repo")
    port = free_port()
    log = repo.parent / "service.log"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "SHAPING_API_KEY": KEY,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shaping.runs", "serve", "--repo", str(repo), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"the service did not start:\n{log.read_text()}")
        yield url, repo, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sh(repo, "dvc", "queue", "stop", "--kill", check=False)


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


@pytest.mark.slow
def test_submit_follow_cancel_and_refusals(service: tuple[str, Path, Path]) -> None:
    url, repo, log = service
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

    # a bad key is a 422 naming it, and nothing is queued
    bad = client.post("/runs", json={"overrides": [SMOKE, "lora.rr=4"]})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_override"
    assert "lora.rr" in bad.json()["message"]
    assert client.post("/runs", json={"overrides": [SMOKE], "name": "no spaces"}).status_code == 422
    assert client.get("/runs").json() == {"runs": []}

    # three runs on one worker: the first succeeds, the second waits in the queue and is cancelled there,
    # the third (long) is killed while it trains
    first = client.post("/runs", json={"overrides": [SMOKE, "lora.r=4"], "name": "r4"})
    assert first.status_code == 202 and first.json() == {**first.json(), "id": "r4", "status": "queued"}
    assert client.post("/runs", json={"overrides": [SMOKE, "lora.r=2"], "name": "r2"}).status_code == 202
    long = client.post("/runs", json={"overrides": [SMOKE, "train.max_steps=2000"], "name": "long"})
    assert long.status_code == 202
    assert client.post("/runs", json={"overrides": [SMOKE], "name": "r4"}).json()["code"] == "name_taken"
    cancelled = client.post("/runs/r2/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.json()

    run = wait_for(client, "r4", {"succeeded", "failed"})
    assert run["status"] == "succeeded", client.get("/runs/r4/logs").json()
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

    # a running one's delivers lines while it trains: the stream is read until the train stage starts
    wait_for(client, "long", {"running"})
    live = sse(client, "/runs/long/logs/stream", until="Running stage 'train'")
    assert not any(event == "end" for event, _ in live)
    deadline = time.monotonic() + 180  # its loss curve gains points while it trains
    while not client.get("/runs/long/metrics").json()["history"].get("loss"):
        assert time.monotonic() < deadline, client.get("/runs/long").json()
        time.sleep(1)
    assert client.get("/runs/long").json()["status"] == "running"
    killed = client.post("/runs/long/cancel")
    assert killed.status_code == 200 and killed.json()["status"] == "cancelled", killed.json()
    assert wait_for(client, "long", {"cancelled", "failed", "succeeded"}, timeout=60)["status"] == "cancelled"

    listed = {r["id"]: r["status"] for r in client.get("/runs").json()["runs"]}
    assert listed == {"long": "cancelled", "r4": "succeeded", "r2": "cancelled"}
    assert sorted(r["id"] for r in client.get("/runs", params={"status": "cancelled"}).json()["runs"]) == ["long", "r2"]
    assert client.get("/runs", params={"status": "nope"}).status_code == 422
    assert client.get("/runs/nope").status_code == 404
    assert client.get("/runs/nope/logs/stream").status_code == 404
    assert client.post("/runs/r4/cancel").json()["code"] == "not_cancellable"

    # the key is in no log and no file of the repository
    assert KEY not in log.read_text()
    for path in repo.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.stat().st_size < 5_000_000:
            assert KEY.encode() not in path.read_bytes(), path


def test_a_folder_that_is_not_a_repository_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shaping.runs", "serve", "--repo", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and f"{tmp_path}: no dvc.yaml and conf/ here" in proc.stderr
