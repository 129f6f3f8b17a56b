"""Local generation throughput: raw `model.generate` against `shaping.serve`, measured in one run.

    python bench/generation_throughput.py                 # batches / in flight 8, 32, 64
    python bench/generation_throughput.py --requests 256  # more requests per setting (steadier)
    python bench/generation_throughput.py --gpu           # CUDA: Qwen2.5-0.5B's shape, random bf16 weights
    python bench/generation_throughput.py --gpu --vllm    # and vLLM's server (vllm serve, multi-LoRA) beside them
    python bench/generation_throughput.py --keep m --compare-url http://127.0.0.1:8000/v1
                                                          # and a server started by hand on m/model + m/adapter

Raw: the base model's `generate` sampled (temperature 1, no top-p/top-k cut) for 32 new tokens,
on left-padded batches of chat prompts, batch after batch, in this process. Server: the real
`python -m shaping.serve` (via `running_server`, on 127.0.0.1, CPU, --max-batch-size 64, its default
--threads: all cores but one, the raw baseline having them all) with the
same model and a LoRA adapter, driven by an async client keeping 8 / 32 / 64 requests in
flight, half of them to the adapter (alternating), each sampled with max_tokens 32 and no seed.
The client is aiohttp posting raw JSON, as vLLM's benchmarks/benchmark_serving.py drives a server
(`--client httpx`: an httpx AsyncClient, which takes about 4 ms of CPU a request here against
aiohttp's 1, on the cores the server uses). tokens/s counts generated tokens (up to the
end-of-turn token, as the server's usage counts them) over wall time; the server's figure
includes HTTP, JSON and the client, which share the machine.
"engine in process" is the Engine with the server's mixed load and all cores, in this process
(no HTTP). The table also gives the server's mean rows per decoding step and the share of the wall time its
generate thread was busy (/health's `row_steps`, `steps` and `generate_s`). Last, the `hf`
synthesis backend (HFBackend, as the demo's teacher: batch_size 32, keyed requests, each seeded)
over the same prompts, sampled for 32 tokens, against raw `generate` at batch 32.
`--vllm` (or `--compare-url`) adds another server under the same client and load: its tokens/s,
against raw and against shaping.serve (a server whose usage counts the end-of-turn token, as
vLLM's does, gains at most 1 token in 32). The model is the `tiny` model config's architecture
(conf/model/tiny.yaml) with random weights and a BPE-4096 tokenizer trained on data/corpus here
(no hub); the adapter is LoRA r=16 on all linear layers, random weights.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from common import demo_corpus

from shaping.config import compose
from shaping.inference.hf import end_of_turn_ids
from shaping.serve.launch import running_server, stop

NEW_TOKENS = 32
SIZES = (8, 32, 64)
DEVICE, DTYPE = "cpu", torch.float32  # --gpu: cuda, bf16


def load(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPE).to(DEVICE).eval()


def build_gpu_models(folder: Path) -> tuple[Path, Path]:
    """Qwen2.5-0.5B's architecture (bench/train_throughput.py's shape) with random bf16 weights, and a
    random LoRA adapter (r=16, all linear layers) over it."""
    from peft import LoraConfig, get_peft_model
    from train_throughput import build_gpu_model

    model_dir, adapter_dir = folder / "model", folder / "adapter"
    build_gpu_model("Qwen2.5-0.5B", model_dir)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load(model_dir), config).save_pretrained(str(adapter_dir))
    return model_dir, adapter_dir


def build_model(folder: Path) -> tuple[Path, Path]:
    """The tiny architecture with random weights, and a random LoRA adapter over it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from shaping.scratch.pretraining import build_model as build
    from shaping.scratch.tokenizer import train_bpe_tokenizer

    model_dir, adapter_dir = folder / "model", folder / "adapter"
    tokenizer = train_bpe_tokenizer(demo_corpus().texts(), vocab_size=4096)
    tokenizer.save_pretrained(model_dir)
    arch = compose([]).model.architecture
    assert arch is not None
    torch.manual_seed(0)
    build(arch, tokenizer).save_pretrained(model_dir)  # type: ignore[operator]  # typed loosely
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(adapter_dir))
    return model_dir, adapter_dir


def prompts(count: int) -> list[list[dict[str, str]]]:
    users = [m["content"][:300] for d in demo_corpus().dialogues for m in d if m["role"] == "user"]
    return [[{"role": "user", "content": users[i % len(users)]}] for i in range(count)]


def raw_throughput(model_dir: Path, batch: int, requests: int) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = load(model_dir)
    end_ids = end_of_turn_ids(model, tokenizer)
    texts = [
        str(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)) for c in prompts(requests)
    ]

    def run(chunk: list[str]) -> int:
        enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        enc = enc.to(DEVICE)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=NEW_TOKENS,
                eos_token_id=end_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens = 0
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            end = next((i for i, t in enumerate(row) if t in end_ids), len(row))
            tokens += end
        return tokens

    run(texts[:batch])  # warm-up
    start, tokens = time.perf_counter(), 0
    for i in range(0, requests, batch):
        tokens += run(texts[i : i + batch])
    return tokens / (time.perf_counter() - start)


async def served_throughput(
    url: str, in_flight: int, requests: int, client: str = "aiohttp", stats: bool = True
) -> tuple[float, float, float]:
    """tokens/s, mean rows per generate() call and the share of the wall time the server's
    generate thread was busy, `in_flight` requests at a time. `stats`: the server is
    shaping.serve, whose /health gives the last two (else they are nan)."""
    conversations = prompts(requests)
    queue = list(range(requests))
    tokens = 0
    post, get, close = await (aiohttp_client if client == "aiohttp" else httpx_client)(url, in_flight)

    async def ask(i: int) -> int:
        body: dict[str, Any] = {
            "model": "base" if i % 2 == 0 else "tuned",
            "messages": conversations[i],
            "temperature": 1.0,
            "max_tokens": NEW_TOKENS,
        }
        return int((await post("/chat/completions", body))["usage"]["completion_tokens"])

    async def worker() -> None:
        nonlocal tokens
        while queue:
            done = await ask(queue.pop())  # (not `tokens += await ...`: that reads tokens before)
            tokens += done

    try:
        await asyncio.gather(*(ask(i) for i in range(2)))  # warm-up
        health = url.removesuffix("/v1") + "/health"
        before = await get(health) if stats else {}
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
        after = await get(health) if stats else {}
    finally:
        await close()
    if not stats:  # another server: no figures of ours on /health
        return tokens / elapsed, float("nan"), float("nan")
    rows = (after["row_steps"] - before["row_steps"]) / max(1, after["steps"] - before["steps"])
    return tokens / elapsed, rows, (after["generate_s"] - before["generate_s"]) / elapsed


Post = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def aiohttp_client(url: str, in_flight: int) -> tuple[Post, Callable[[str], Awaitable[Any]], Any]:
    """post(path, body) and get(url): raw POSTs of JSON bytes on `in_flight` kept-alive connections."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=in_flight), timeout=aiohttp.ClientTimeout(total=600)
    )
    headers = {"Content-Type": "application/json"}

    async def post(path: str, body: dict[str, Any]) -> Any:
        async with session.post(url + path, data=json.dumps(body), headers=headers) as response:
            response.raise_for_status()
            return json.loads(await response.read())

    async def get(address: str) -> Any:
        async with session.get(address) as response:
            return json.loads(await response.read())

    return post, get, session.close


async def httpx_client(url: str, in_flight: int) -> tuple[Post, Callable[[str], Awaitable[Any]], Any]:
    import httpx

    client = httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=in_flight))

    async def post(path: str, body: dict[str, Any]) -> Any:
        response = await client.post(path, json=body)
        response.raise_for_status()
        return response.json()

    async def get(address: str) -> Any:
        return (await client.get(address)).json()

    return post, get, client.aclose


def engine_throughput(model_dir: Path, adapter_dir: Path, in_flight: int, requests: int) -> float:
    """tokens/s of the Engine in this process with the same mixed load as the server's (half the
    rows on the adapter, a new row added as each ends, `in_flight` at a time): the server's figure
    without HTTP, JSON and the event loop."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from shaping.inference.engine import Engine, Row
    from shaping.inference.hf import SamplingOptions, _prompt_ids, adapter_route

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(load(model_dir), str(adapter_dir), adapter_name="tuned").eval()
    ids = _prompt_ids(tokenizer, prompts(requests))
    options = SamplingOptions(1.0, 1.0, NEW_TOKENS, (), None)
    engine = Engine(
        model,
        tokenizer,
        end_of_turn_ids(model, tokenizer),
        max_rows=max(SIZES),
        route=adapter_route(model, ["tuned", "__base__"]),
    )
    queue, tokens = list(range(requests)), 0

    def add() -> None:
        i = queue.pop()
        engine.add(Row(ids[i], options, adapter="__base__" if i % 2 == 0 else "tuned"))

    for _ in range(in_flight):
        add()
    start = time.perf_counter()
    while not engine.idle:
        for _row, reply in engine.step():
            tokens += reply.completion_tokens
            if queue:
                add()
    return tokens / (time.perf_counter() - start)


def engine_base_throughput(model_dir: Path, batch: int, requests: int) -> float:
    """tokens/s of `generate_rows` (the Engine) on the base model alone, `batch` rows at a time, as
    raw_throughput runs `generate`: the engine's own cost, without adapters or a server."""
    from transformers import AutoTokenizer

    from shaping.inference.hf import SamplingOptions, generate_rows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load(model_dir)
    conversations = prompts(requests)
    options = [SamplingOptions(1.0, 1.0, NEW_TOKENS, (), None)] * batch
    generate_rows(model, tokenizer, conversations[:batch], options)  # warm-up
    start, tokens = time.perf_counter(), 0
    for i in range(0, requests, batch):
        chunk = conversations[i : i + batch]
        tokens += sum(r.completion_tokens for r in generate_rows(model, tokenizer, chunk, options[: len(chunk)]))
    return tokens / (time.perf_counter() - start)


def backend_throughput(model_dir: Path, requests: int) -> float:
    """tokens/s of the hf synthesis backend over `requests` keyed requests (one generate() call)."""
    from shaping.inference.hf import HFBackend
    from shaping.inference.types import ChatRequest

    backend = HFBackend(str(model_dir), batch_size=32, seed=0, defaults={"temperature": 1.0})
    batch = [
        ChatRequest(messages=c, options={"max_new_tokens": NEW_TOKENS}, key=f"r{i}")
        for i, c in enumerate(prompts(requests))
    ]
    backend.generate(batch[:2])  # warm-up
    start = time.perf_counter()
    replies = backend.generate(batch)
    return sum(r.completion_tokens for r in replies) / (time.perf_counter() - start)


@contextlib.contextmanager
def running_vllm(model_dir: Path, adapter_dir: Path, log_path: Path, timeout_s: float = 900) -> Iterator[str]:
    """vLLM's OpenAI server (`vllm serve`) on 127.0.0.1 with the same model as "base" and the
    adapter as "tuned" (its own multi-LoRA batches), up to 64 sequences at once; yields its /v1 URL."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    beside = Path(sys.executable).parent / "vllm"  # this environment's, else the one on PATH
    command = [
        str(beside) if beside.exists() else "vllm",
        "serve",
        str(model_dir),
        "--served-model-name",
        "base",
        "--enable-lora",
        "--lora-modules",
        f"tuned={adapter_dir}",
        "--max-lora-rank",
        "16",
        "--max-num-seqs",
        str(max(SIZES)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--seed",
        "0",
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("w") as log:
        # a session of its own: vLLM's engine runs in child processes, stopped with it
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise SystemExit(f"error: vllm serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"error: vllm serve did not answer in {timeout_s:.0f}s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(1)
        yield url
    finally:
        stop(process, timeout_s=30, group=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=128, help="requests per setting")
    parser.add_argument("--server-threads", type=int, default=0, help="the server's --threads (0: its default)")
    parser.add_argument(
        "--client", choices=("aiohttp", "httpx"), default="aiohttp", help="the client that drives the server"
    )
    parser.add_argument("--gpu", action="store_true", help="on CUDA: Qwen2.5-0.5B's shape, random bf16 weights")
    parser.add_argument(
        "--vllm", action="store_true", help="also vLLM's server (vllm serve, multi-LoRA) on the same model and adapter"
    )
    parser.add_argument(
        "--compare-url",
        help="also this running OpenAI-compatible server (http://host:port/v1) serving 'base' and 'tuned': "
        "started by hand on the model and adapter an earlier run saved under --keep",
    )
    parser.add_argument(
        "--keep", type=Path, help="the model and adapter in this folder: made there if missing, else reused"
    )
    args = parser.parse_args()
    if args.requests < max(SIZES):
        parser.error(f"--requests: at least {max(SIZES)}, the largest batch")
    if args.vllm and not args.gpu:
        parser.error("--vllm needs --gpu: vLLM runs on the GPU, so the figures beside it must too")
    if args.vllm and importlib.util.find_spec("vllm") is None:
        parser.error("--vllm needs vLLM installed (pip install vllm, on a CUDA machine); or see --compare-url")
    global DEVICE, DTYPE
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("error: --gpu needs a CUDA GPU, and torch sees none here; run without --gpu")
        DEVICE, DTYPE = "cuda", torch.bfloat16
    with tempfile.TemporaryDirectory(prefix="gen-bench-") as tmp:
        folder, kind = args.keep or Path(tmp), "gpu" if args.gpu else "cpu"
        if (folder / "kind.txt").is_file():  # made by an earlier run with --keep
            if (folder / "kind.txt").read_text().strip() != kind:
                parser.error(f"--keep {folder}: its model was made for the other device (--gpu or not); use another")
            model_dir, adapter_dir = folder / "model", folder / "adapter"
        else:
            model_dir, adapter_dir = build_gpu_models(folder) if args.gpu else build_model(folder)
            (folder / "kind.txt").write_text(kind + "\n")
        raw = {size: raw_throughput(model_dir, size, args.requests) for size in SIZES}
        backend = backend_throughput(model_dir, args.requests)
        engine_base = engine_base_throughput(model_dir, max(SIZES), args.requests)
        engine = {size: engine_throughput(model_dir, adapter_dir, size, args.requests) for size in SIZES}
        served: dict[int, tuple[float, float, float]] = {}
        with running_server(
            model_dir,
            {"tuned": adapter_dir},
            args=[
                "--served-model-name",
                "base",
                "--device",
                DEVICE,
                "--max-batch-size",
                str(max(SIZES)),
                "--threads",
                str(args.server_threads),
            ],
            env={"HF_HUB_OFFLINE": "1"},
            log_path=Path(tmp) / "server.log",
        ) as url:
            for size in SIZES:
                served[size] = asyncio.run(served_throughput(url, size, args.requests, args.client))
        others: dict[str, dict[int, float]] = {}

        def other(url: str) -> dict[int, float]:  # another server: tokens/s only
            return {
                size: asyncio.run(served_throughput(url, size, args.requests, args.client, False))[0] for size in SIZES
            }

        if args.compare_url:
            others[args.compare_url] = other(args.compare_url)
        if args.vllm:
            gc.collect()
            torch.cuda.empty_cache()  # this process's cached blocks, for vLLM's share of the GPU
            with running_vllm(model_dir, adapter_dir, Path(tmp) / "vllm.log") as url:
                others["vllm serve"] = other(url)
    print(f"\n{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, {NEW_TOKENS} new tokens, sampled")
    print(
        f"{'batch / in flight':>18} | {'raw tok/s':>10} | {'serve tok/s (mixed)':>19} | ratio | "
        f"{'rows/step':>9} | generate busy | engine in process (mixed)"
    )
    print(f"{'-' * 18}-+-{'-' * 10}-+-{'-' * 19}-+-------+-{'-' * 9}-+---------------+--------------------------")
    for size in SIZES:
        tok_s, rows, busy = served[size]
        print(
            f"{size:>18} | {raw[size]:>10,.0f} | {tok_s:>19,.0f} | {tok_s / raw[size]:.2f}x | "
            f"{rows:>9.1f} | {busy:>13.0%} | {engine[size]:>7,.0f} ({engine[size] / raw[size]:.2f}x)"
        )
    top = max(SIZES)
    ratio = engine_base / raw[top]
    print(f"engine, base model alone, batch {top}: {engine_base:,.0f} tok/s, {ratio:.2f}x raw batch {top}")
    print(f"hf synthesis backend (batch_size 32): {backend:,.0f} tok/s, {backend / raw[32]:.2f}x raw batch 32")
    for name, figures in others.items():
        for size in SIZES:
            print(
                f"{name}, {size} in flight (mixed): {figures[size]:,.0f} tok/s, {figures[size] / raw[size]:.2f}x raw; "
                f"shaping.serve {served[size][0] / figures[size]:.2f}x it"
            )


if __name__ == "__main__":
    main()
