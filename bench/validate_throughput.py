"""Validation-gate throughput on a large chat JSONL, against bare JSON parsing of the same file.

    python bench/validate_throughput.py [--rows 1000000]

Writes a synthetic chat JSONL (~500 bytes a row) to a temp folder, then times, in one run: a
bare `orjson.loads` loop, a bare stdlib `json.loads` loop, and the gate's pass 1 (`Gate.scan`:
parsing, the default dataset.schema rules, conversation structure, think tags and every quality
figure, with the project's default config) in one process and with `--workers` processes
(validation.workers). Each is timed `--repeat` times and the best kept (shared machines are
noisy). Prints rows per second and the ratio gate / bare orjson.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from shaping.config import compose
from shaping.data import Gate

WORDS = [
    "seed",
    "root",
    "river",
    "valley",
    "spring",
    "autumn",
    "library",
    "jar",
    "label",
    "meadow",
    "bank",
    "rain",
    "soil",
    "light",
    "water",
    "patient",
    "small",
    "practical",
    "today",
    "try",
    "plant",
    "season",
    "grow",
    "keep",
    "neighbour",
    "garden",
]


def write_rows(path: Path, rows: int) -> int:
    rng = random.Random(0)
    with path.open("wb") as out:
        for i in range(rows):
            prompt = " ".join(rng.choices(WORDS, k=12)) + "?"
            reply = " ".join(rng.choices(WORDS, k=60)) + "."
            row = {
                "id": f"row-{i}",
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
            }
            out.write(orjson.dumps(row) + b"\n")
    return path.stat().st_size


def timed(label: str, rows: int, fn: object, repeat: int) -> tuple[str, float]:
    assert callable(fn)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return label, rows / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    cfg = compose()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chat.jsonl"
        size = write_rows(path, args.rows)

        def bare_orjson() -> None:
            with path.open("rb") as handle:
                for line in handle:
                    orjson.loads(line)

        def bare_json() -> None:
            with path.open("rb") as handle:
                for line in handle:
                    json.loads(line)

        def gate(workers: int) -> Callable[[], None]:
            def run() -> None:
                g = Gate(cfg.dataset, cfg.validation.quality, workers=workers)
                g.scan(path)
                assert g.valid_rows == args.rows and not g.errors

            return run

        results = [
            timed("bare orjson.loads loop", args.rows, bare_orjson, args.repeat),
            timed("bare json.loads loop (stdlib)", args.rows, bare_json, args.repeat),
            timed("validation gate, pass 1 (Gate.scan), 1 process", args.rows, gate(1), args.repeat),
            timed(f"validation gate, pass 1, {args.workers} processes", args.rows, gate(args.workers), args.repeat),
        ]
    print(f"{args.rows:,} rows, {size / args.rows:.0f} bytes/row, {os.cpu_count()} CPU cores, best of {args.repeat}")
    print("| reader | rows/s |")
    print("|---|---|")
    for label, rate in results:
        print(f"| {label} | {rate:,.0f} |")
    orjson_rate = results[0][1]
    print(f"\ngate / bare orjson: {results[2][1] / orjson_rate:.2f} (1 process), ", end="")
    print(f"{results[3][1] / orjson_rate:.2f} ({args.workers} processes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
