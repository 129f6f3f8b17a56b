"""Serve a local model and its LoRA adapters over an OpenAI-compatible API.

    python -m shaping.serve --model models/base --adapter tuned=models/adapter
    python -m shaping.serve --model models/base --adapter a=runs/a --adapter b=runs/b --port 0
    SERVE_KEY=... python -m shaping.serve --model models/base --api-key-env SERVE_KEY

A request's `model` picks what answers: the served base name (the model folder's name unless
--served-model-name) runs the base with adapters disabled, an adapter's name runs that adapter.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import torch
import uvicorn

from shaping.device import pick_device
from shaping.errors import ShapingError
from shaping.serve.app import create_app
from shaping.serve.models import ServedModels


def parse_adapter(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{value!r}: expected name=PATH, e.g. tuned=models/adapter")
    return name, path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shaping.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, metavar="PATH", help="base model folder (or hub id)")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        type=parse_adapter,
        metavar="NAME=PATH",
        help="a PEFT adapter folder served as model NAME (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    parser.add_argument("--served-model-name", help="the base model's name in requests (default: its folder name)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="most rows (requests x n) generating at once")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=0,
        help="most tokens (each row's prompt + max tokens) reserved by the rows generating at once; 0: no bound",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="how long an idle server's first requests wait for more to join them when few are waiting",
    )
    parser.add_argument(
        "--default-max-tokens", type=int, default=256, help="reply length when a request sets no max_tokens"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--quantization",
        choices=("nf4", "fp4"),
        help="load the base in 4 bits (bitsandbytes), as QLoRA adapters were trained on it; "
        "an adapter's train run record says which base it needs",
    )
    parser.add_argument(
        "--no-double-quant",
        dest="double_quant",
        action="store_false",
        help="with --quantization: without double quantization (lora.quantization.double_quant: false)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch's CPU threads; 0: on CPU all cores but one (left to HTTP and tokenizing), on CUDA torch's default",
    )
    parser.add_argument(
        "--allow-runtime-lora-updating",
        action="store_true",
        help="answer /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); "
        "they load any adapter folder on this machine, so they are off unless asked for",
    )
    parser.add_argument("--api-key-env", metavar="NAME", help="require 'Authorization: Bearer <$NAME>' on /v1 routes")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    names = [name for name, _ in args.adapter]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        parser.error(f"--adapter: name(s) given twice: {', '.join(duplicates)}")
    if args.max_batch_size < 1:
        parser.error("--max-batch-size: must be at least 1")
    if args.threads < 0:
        parser.error("--threads: must be 0 (auto) or more")
    if args.max_batch_tokens < 0:
        parser.error("--max-batch-tokens: must be 0 (no bound) or more")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            sys.exit(f"shaping.serve: error: --api-key-env {args.api_key_env}: that environment variable is empty")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("shaping.serve: error: --device cuda: no CUDA device here; use --device auto or cpu")
    device = pick_device() if args.device == "auto" else args.device
    if args.threads or device == "cpu":
        # generation holds these cores; the event loop (HTTP, JSON, tokenizing) needs one of its own,
        # or each steals the other's time slices (measured: docs/benchmarks.md#generation-raw-vs-served)
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - 1))
    base_name = args.served_model_name or (Path(args.model).resolve().name if Path(args.model).exists() else args.model)
    try:
        models = ServedModels(
            args.model,
            dict(args.adapter),
            base_name=base_name,
            device=device,
            quantization=args.quantization,
            double_quant=args.double_quant,
        )
    except ShapingError as err:
        sys.exit(f"shaping.serve: error: {err}")
    app = create_app(
        models,
        max_batch_size=args.max_batch_size,
        batch_window_s=args.batch_window_ms / 1000,
        max_batch_tokens=args.max_batch_tokens or None,
        default_max_tokens=args.default_max_tokens,
        api_key=api_key,
        allow_lora_updates=args.allow_runtime_lora_updating,
    )
    # bind and listen before announcing the port, so a client that reads the line can connect at once
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: uvicorn writes a response's head and body separately, and
    # with Nagle on, a keep-alive client's delayed ACK holds the body back ~40 ms per request
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"shaping.serve: listening on http://{shown}:{port}/v1 (models: {', '.join(models.names)})", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
