"""The runs service's latencies: from `POST /runs` to the run's `run.started` event, from its last
training step to `run.succeeded`, and from an event to its arrival at a webhook.

    python bench/runs_latency.py              # 3 runs of the smoke config, one after another
    python bench/runs_latency.py --runs 5

In a temporary copy of the repository (as bench/demo_seeds.py makes it), the smoke config is built
once with `dvc repro`, then `python -m shaping.runs serve` runs with a webhook (a local receiver,
every event type) and each run (`lora.r` = 2, 3, 4, ...) is submitted after the previous one ended,
so the queue's worker starts afresh each time as it would on an idle machine. Times come from this
machine's clock: when the POST was sent, when each event arrived on `GET /events` (SSE) and at the
receiver, and the event's own `time` (when the service derived it; `run.queued` is left out of the
webhook delay, its time being the queue's). The service looks at its runs about once a second,
which bounds the resolution of the first two.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from demo_seeds import copy_repo, sh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receiver() -> tuple[ThreadingHTTPServer, dict[str, float]]:
    arrived: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            arrived.setdefault(event["id"], time.time())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, arrived


def follow(url: str, seen: dict[str, tuple[float, dict[str, object]]], stop: threading.Event) -> None:
    """Every event of GET /events with the time it arrived here."""
    try:
        with httpx.Client(base_url=url, timeout=None) as client, client.stream("GET", "/events") as response:
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("data: "):
                    event = json.loads(line.removeprefix("data: "))
                    seen.setdefault(event["id"], (time.time(), event))
    except httpx.HTTPError:  # the service stopped under the stream
        if not stop.is_set():
            raise


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runs-latency-", ignore_cleanup_errors=True) as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        copy_repo(repo)
        sh(repo, sys.executable, "-m", "shaping.config", "+experiment=smoke")
        conf = repo / "conf" / "config.yaml"
        hook = "  webhooks:\n    - url_env: BENCH_WEBHOOK\n      events: ['*']\n      max_per_minute: 6000\n"
        conf.write_text(conf.read_text().replace("  webhooks: []\n", hook, 1))
        git = ("git", "-c", "user.email=bench@example.com", "-c", "user.name=bench")
        sh(repo, *git, "commit", "-qam", "smoke")
        print("building the smoke config (dvc repro) ...", flush=True)
        sh(repo, "dvc", "repro")
        sh(repo, *git, "add", "-A")
        sh(repo, *git, "commit", "-qm", "smoke run")

        hook_server, arrived = receiver()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "BENCH_WEBHOOK": f"http://127.0.0.1:{hook_server.server_address[1]}/hook",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        env.pop("SHAPING_API_KEY", None)
        log = (Path(tmp) / "service.log").open("w")
        service = subprocess.Popen(
            [sys.executable, "-m", "shaping.runs", "serve", "--repo", str(repo), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        seen: dict[str, tuple[float, dict[str, object]]] = {}
        stop = threading.Event()
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            threading.Thread(target=follow, args=(url, seen, stop), daemon=True).start()
            to_start, to_end, train_to_end, delays = [], [], [], []
            client = httpx.Client(base_url=url, timeout=120)
            for n in range(args.runs):
                run_id = f"r{n + 2}"
                posted = time.time()
                answer = client.post(
                    "/runs", json={"overrides": ["+experiment=smoke", f"lora.r={n + 2}"], "name": run_id}
                )
                answer.raise_for_status()
                while not any(i.startswith(f"{run_id}/run.") and i.split("/")[1] in END for i in seen):
                    time.sleep(0.2)
                if f"{run_id}/run.succeeded" not in seen:
                    raise SystemExit(f"{run_id} did not succeed: {client.get(f'/runs/{run_id}').json()}")
                to_start.append(seen[f"{run_id}/run.started"][0] - posted)
                steps = [t for i, (t, e) in seen.items() if i.startswith(f"{run_id}/train.progress/")]
                to_end.append(seen[f"{run_id}/run.succeeded"][0] - max(steps))
                evaluated = seen[f"{run_id}/stage.started/evaluate"][0]
                train_to_end.append(seen[f"{run_id}/run.succeeded"][0] - evaluated)
                time.sleep(2)  # the webhook's last deliveries
                delays += [
                    arrived[i] - datetime.fromisoformat(str(e["time"])).timestamp()
                    for i, (_, e) in seen.items()
                    if i.startswith(f"{run_id}/") and i in arrived and i.split("/")[1] not in ("run.queued",)
                ]
                print(
                    f"{run_id}: started {to_start[-1]:.2f} s after its POST, "
                    f"succeeded {to_end[-1]:.2f} s after its last step"
                )
        finally:
            stop.set()
            service.terminate()
            service.wait(30)
            sh(repo, "dvc", "queue", "stop", "--kill")
            hook_server.shutdown()
    print()
    print("| figure | median (range, count) |")
    print("|---|---|")
    print(f"| POST /runs -> run.started (on GET /events) | {summary(to_start)} |")
    print(f"| last train.progress -> run.succeeded | {summary(to_end)} |")
    print(f"| of which stage.started evaluate -> run.succeeded | {summary(train_to_end)} |")
    print(f"| event derived (its `time`) -> at the webhook | {summary(delays)} |")
    return 0


END = ("run.succeeded", "run.failed", "run.cancelled")

if __name__ == "__main__":
    sys.exit(main())
