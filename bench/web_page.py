"""The runs page's speed in a real headless Chromium: its load time with 50 runs listed, how much the
page moves while the table updates live, and the delay from a DVCLive step written to its point on the
run page's loss chart.

    python bench/web_page.py                 # 50 runs, 5 page loads, a live run of 60 steps
    python bench/web_page.py --runs 100 --loads 10 --live-steps 100

In a temporary copy of the repository (as bench/demo_seeds.py makes it) the smoke config is built with
`dvc repro`; then, before the service starts, runs are queued by hand as DVC's queue takes them: first
`live` (`train.max_steps=<live-steps>`, the run whose curve is followed), then the rest in one
`dvc exp run --queue` grid over `seed`, so the table lists `--runs` real runs, not a stub. The service
(`python -m shaping.runs serve`, with a key) starts DVC's queue worker as soon as it sees queued runs,
so everything below is measured with `live` training on the same cores, as it would be in use.

- load: a fresh tab (the key put in sessionStorage first) goes to `/`; the figure is the page's own
  `performance.mark("shaping:table")`, set when the table first renders with the runs, in ms since
  navigation start; `GET /runs?full=true`'s share is its Resource Timing `responseEnd`.
- layout shift: Chromium's `layout-shift` entries (the CLS score, without those right after input)
  summed over 20 s on the table while the runs update (GET /events, polling).
- step -> chart: this process polls the live run's `dvclive/train/plots/metrics/loss.tsv` in DVC's
  temporary workspace every 20 ms and takes, for each new row, the file's modification time (the row's
  write: DVCLive appends one row per logged step, seconds apart); the page records `Date.now()` when
  it has drawn that step's point (window.shapingTrace, after uPlot's setData). Same machine, same
  clock. The service looks at the run once a second and its SSE route every 0.25 s, which bounds it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
from demo_seeds import copy_repo, sh

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLS = """() => new Promise((resolve) => {
  let score = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (!e.hadRecentInput) score += e.value;
  }).observe({ type: "layout-shift", buffered: false });
  setTimeout(() => resolve(score), 20000);
})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(values: list[float], unit: str) -> str:
    return f"{statistics.median(values):.0f} {unit} (min {min(values):.0f}, max {max(values):.0f}, n={len(values)})"


def watch_rows(repo: Path, written: dict[int, float], stop: threading.Event) -> None:
    """Each new step of any running workspace's loss.tsv with the file's mtime when the row was first seen."""
    sizes: dict[Path, int] = {}
    while not stop.is_set():
        for path in (repo / ".dvc" / "tmp" / "exps").glob("tmp*/dvclive/train/plots/metrics/loss.tsv"):
            try:
                stat = path.stat()
                if sizes.get(path) == stat.st_size:
                    continue
                text = path.read_text(encoding="utf-8")
            except OSError:
                continue
            sizes[path] = stat.st_size
            for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
                try:
                    written.setdefault(int(row["step"]), stat.st_mtime_ns / 1e9)
                except (KeyError, TypeError, ValueError):
                    continue
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="runs listed in the table (queued by hand)")
    parser.add_argument("--loads", type=int, default=5, help="page loads timed")
    parser.add_argument("--live-steps", type=int, default=60, help="train.max_steps of the run followed live")
    parser.add_argument("--service-log", type=Path, help="where the service's log goes (default: the temp folder)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="web-page-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        copy_repo(repo)
        sh(repo, sys.executable, "-m", "shaping.config", "+experiment=smoke")
        git = ("git", "-c", "user.email=bench@example.com", "-c", "user.name=bench")
        sh(repo, *git, "commit", "-qam", "smoke")
        print("building the smoke config (dvc repro) ...", flush=True)
        sh(repo, "dvc", "repro")
        sh(repo, *git, "add", "-A")
        sh(repo, *git, "commit", "-qm", "smoke run")
        print(f"queueing {args.runs} runs by hand ...", flush=True)
        smoke = ("-S", "+experiment=smoke")
        sh(repo, "dvc", "exp", "run", "--queue", "--name", "live", *smoke, "-S", f"train.max_steps={args.live_steps}")
        sh(repo, "dvc", "exp", "run", "--queue", *smoke, "-S", f"seed=range(1,{args.runs})")

        key = secrets.token_urlsafe(16)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SHAPING_API_KEY": key,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        log = (args.service_log or Path(tmp) / "service.log").open("w")
        service = subprocess.Popen(
            [sys.executable, "-m", "shaping.runs", "serve", "--repo", str(repo), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        written: dict[int, float] = {}
        stop = threading.Event()
        threading.Thread(target=watch_rows, args=(repo, written, stop), daemon=True).start()
        loads, api_ends, sizes = [], [], []
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            client = httpx.Client(base_url=url, timeout=120, headers={"X-Api-Key": key})
            listed = client.get("/runs", params={"full": "true"})
            sizes.append(len(listed.content))
            count = len(listed.json()["runs"])
            print(f"{count} runs listed; GET /runs?full=true is {sizes[0] / 1024:.1f} KiB", flush=True)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
                # the live run's page first, open before its first step: every point is seen as it comes
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(f"sessionStorage.setItem('shaping.apiKey', {json.dumps(key)})")
                follow = context.new_page()
                follow.goto(f"{url}/#/runs/live")

                for n in range(args.loads):
                    tab = context.new_page()
                    tab.goto(f"{url}/")
                    tab.wait_for_function(
                        f"document.querySelectorAll('#runs-table tbody tr').length >= {count}", timeout=120_000
                    )
                    tab.wait_for_function("performance.getEntriesByName('shaping:table').length > 0")
                    mark = tab.evaluate("performance.getEntriesByName('shaping:table')[0].startTime")
                    api_end = tab.evaluate(
                        "performance.getEntriesByType('resource')"
                        ".filter(e => e.name.includes('/runs?full=true'))[0].responseEnd"
                    )
                    loads.append(float(mark))
                    api_ends.append(float(api_end))
                    print(f"load {n + 1}: table with {count} rows at {mark:.0f} ms (API answered at {api_end:.0f} ms)")
                    if n < args.loads - 1:
                        tab.close()
                shift = float(tab.evaluate(CLS))
                print(f"layout shift over 20 s of live updates on the table: {shift:.4f}", flush=True)

                deadline = time.monotonic() + 60 * 30
                while True:
                    status = client.get("/runs/live").json()["status"]
                    if status in ("succeeded", "failed", "cancelled"):
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit("the live run did not end in 30 minutes")
                    time.sleep(2)
                follow.wait_for_timeout(2000)
                trace = follow.evaluate("window.shapingTrace.filter(t => t.run === 'live')")
                browser.close()
            drawn = {int(t["step"]): float(t["t"]) / 1000 for t in trace}
            derived = {int(t["step"]): datetime.fromisoformat(str(t["derived"])).timestamp() for t in trace}
            hidden = {int(t["step"]) for t in trace if t.get("hidden")}
            delays = [1000 * (drawn[s] - written[s]) for s in sorted(drawn) if s in written]
            print(f"live: {status}; {len(written)} steps seen written, {len(drawn)} drawn live")
            for step in sorted(drawn):
                if step in written:
                    late = 1000 * (drawn[step] - written[step])
                    seen = 1000 * (derived[step] - written[step])
                    note = " (tab hidden)" if step in hidden else ""
                    print(f"  step {step}: event derived +{seen:.0f} ms, drawn +{late:.0f} ms after written{note}")
        finally:
            stop.set()
            service.terminate()
            service.wait(30)
            sh(repo, "dvc", "queue", "stop", "--kill")
    print()
    print("| figure | median (range, count) |")
    print("|---|---|")
    print(f"| GET / -> table rendered with {count} runs | {summary(loads, 'ms')} |")
    print(f"| of which GET /runs?full=true answered | {summary(api_ends, 'ms')} |")
    print(f"| layout shift (CLS) over 20 s of live table updates | {shift:.4f} |")
    if delays:
        print(f"| DVCLive step written -> its point drawn on the chart | {summary(delays, 'ms')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
