"""Synthesis throughput: requests per second of this engine against a plain asyncio +
openai.AsyncOpenAI loop and a bare aiohttp + orjson loop, measured in one run.

    python bench/synth_throughput.py                    # 10,000 records x 2 sequential requests, 64 in flight
    python bench/synth_throughput.py --records 500      # a quick run
    python bench/synth_throughput.py --profile /tmp/synth.prof   # cProfile: /tmp/synth.prof.engine, ...

Every client runs each record as two sequential chat completions (the second carries the first
answer) with 64 in flight, against one endpoint that answers at once: a raw asyncio HTTP/1.1
server in its own process, so that the server is not what is measured (its CPU share is
printed). Each client runs in a fresh process; the engine runs a real Pipeline with the
response cache on (a fresh SQLite file), the journal and annotated output, timed over the
whole `execute()`. Besides requests/s, each client's CPU time per request is printed: on a
shared machine it is steadier than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
OPTIONS = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 256}  # what the engine sends: the registry defaults
REPLY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short answer."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
}


# the endpoint -----------------------------------------------------------------------------------
class _Endpoint(asyncio.Protocol):
    """HTTP/1.1 keep-alive, every POST answered with the same completion; GET /stats gives the
    server's CPU seconds so far."""

    body = json.dumps(REPLY).encode()
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = next((int(h[15:]) for h in head.split(b"\r\n") if h.startswith(b"content-length:")), 0)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"get /stats"):
                stats = json.dumps({"cpu_s": time.process_time()}).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(stats), stats))
            else:
                self.transport.write(self.reply)


def serve() -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Endpoint, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def server_cpu(url: str) -> float:
    import httpx

    return float(httpx.get(url.removesuffix("/v1") + "/stats").json()["cpu_s"])


# the clients -----------------------------------------------------------------------------------
class Timer:
    """Wall and CPU time of the work itself (imports, config and client set-up excluded)."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.figures = {"seconds": time.perf_counter() - self.wall, "cpu_s": time.process_time() - self.cpu}


def first_messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question number {i}: what is worth knowing about it?"}]


def second_messages(i: int, answer: str) -> list[dict[str, str]]:
    return [*first_messages(i), {"role": "assistant", "content": answer}, {"role": "user", "content": "Go on."}]


def client_engine(url: str, records: int, concurrency: int) -> dict[str, Any]:
    from shaping.config import compose
    from shaping.pipeline import Pipeline, TrainingSample, model_request

    class TwoSteps(Pipeline):
        name = "bench-two-steps"
        model = Pipeline.model_dep("bench")

        def run(self) -> list[TrainingSample]:
            return self.run_task(self.ask_twice, records=[{"id": i} for i in range(records)])

        def ask_twice(self, record: dict[str, Any]) -> Any:
            first = yield model_request(first_messages(record["id"]), model=self.model)
            messages = second_messages(record["id"], first.get_text())
            second = yield model_request(messages, model=self.model)
            return TrainingSample(
                id=str(record["id"]), messages=[*messages, {"role": "assistant", "content": second.get_text()}]
            )

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            [
                "synth.limit=null",
                f"synth.cache_dir={tmp}/cache",
                "+models.bench.backend=openai",
                f"+models.bench.model={MODEL}",
                f"+models.bench.base_url={url}",
                f"+models.bench.max_concurrency={concurrency}",
            ]
        )
        pipeline = TwoSteps(cfg, output_dir=Path(tmp) / "out")
        with Timer() as timer:
            result = pipeline.execute()
        assert result.samples == records and result.manifest["requests_sent"] == 2 * records, result.manifest
    return {"requests": result.manifest["requests_sent"], **timer.figures}


async def client_openai(url: str, records: int, concurrency: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="unused")
    queue = iter(range(records))
    sent = 0

    async def worker() -> None:
        nonlocal sent
        for i in queue:
            first = await client.chat.completions.create(model=MODEL, messages=first_messages(i), **OPTIONS)  # type: ignore[arg-type]
            answer = first.choices[0].message.content or ""
            await client.chat.completions.create(model=MODEL, messages=second_messages(i, answer), **OPTIONS)  # type: ignore[arg-type]
            sent += 2

    with Timer() as timer:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return {"requests": sent, **timer.figures}


async def client_aiohttp(url: str, records: int, concurrency: int) -> dict[str, Any]:
    import aiohttp
    import orjson

    queue = iter(range(records))
    sent = 0
    endpoint = f"{url}/chat/completions"
    headers = {"Content-Type": "application/json"}

    async def ask(session: aiohttp.ClientSession, messages: list[dict[str, str]]) -> str:
        async with session.post(endpoint, data=orjson.dumps({"model": MODEL, "messages": messages, **OPTIONS})) as r:
            return str(orjson.loads(await r.read())["choices"][0]["message"]["content"])

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        for i in queue:
            answer = await ask(session, first_messages(i))
            await ask(session, second_messages(i, answer))
            sent += 2

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        with Timer() as timer:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"requests": sent, **timer.figures}


def run_client(kind: str, url: str, records: int, concurrency: int, profile: str | None) -> None:
    """In a fresh process: time one client, print its figures as JSON on the last line."""
    import cProfile

    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    if kind == "engine":
        figures = client_engine(url, records, concurrency)
    elif kind == "openai":
        figures = asyncio.run(client_openai(url, records, concurrency))
    else:
        figures = asyncio.run(client_aiohttp(url, records, concurrency))
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)  # type: ignore[arg-type]
    print(json.dumps(figures), flush=True)


# the run ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", default="engine,openai,aiohttp", help="which clients, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="run the clients in turn this many times; best of each")
    parser.add_argument("--profile", help="cProfile each client into <this path>.<client>")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.client:
        profile = f"{args.profile}.{args.client}" if args.profile else None
        run_client(args.client, args.url, args.records, args.concurrency, profile)
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        rows = []
        for kind in args.clients.split(",") * args.repeat:
            before = server_cpu(url)
            command = [sys.executable, __file__, "--client", kind, "--url", url]
            command += ["--records", str(args.records), "--concurrency", str(args.concurrency)]
            if args.profile:
                command += ["--profile", args.profile]
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"client {kind} failed:\n{done.stderr[-3000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            figures.update(kind=kind, server_cpu_s=server_cpu(url) - before)
            rows.append(figures)
    finally:
        server.terminate()
        server.wait()

    best: dict[str, dict[str, Any]] = {}
    for row in rows:  # best of --repeat: on a shared machine the fastest run is the least disturbed one
        row["rate"] = row["requests"] / row["seconds"]
        if row["kind"] not in best or row["rate"] > best[row["kind"]]["rate"]:
            best[row["kind"]] = row
    rates = {kind: row["rate"] for kind, row in best.items()}
    print(
        f"\n{args.records:,} records x 2 sequential requests, {args.concurrency} in flight, "
        f"{os.cpu_count()} CPU cores, best of {args.repeat} (a shared machine: compare ratios within one run)\n"
    )
    print("| client | requests/s | client CPU µs/request | server busy | vs openai loop | vs bare aiohttp |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {
        "engine": "this engine (cache on)",
        "openai": "asyncio + openai.AsyncOpenAI",
        "aiohttp": "aiohttp + orjson",
    }
    for kind, row in best.items():
        ratios = [f"{row['rate'] / rates[k]:.2f}x" if k in rates else "-" for k in ("openai", "aiohttp")]
        print(
            f"| {names[kind]} | {row['rate']:,.0f} | {1e6 * row['cpu_s'] / row['requests']:,.0f} | "
            f"{row['server_cpu_s'] / row['seconds']:.0%} | {ratios[0]} | {ratios[1]} |"
        )


if __name__ == "__main__":
    main()
