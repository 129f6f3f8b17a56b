"""Validation-gate throughput on a large chat JSONL, against bare JSON parsing of the same file.

    python bench/validate_throughput.py [--rows 1000000] [--workers 2] [--repeat 5]

Writes a synthetic chat JSONL (~500 bytes a row) to a temp folder, then times, in one run: a
bare `orjson.loads` loop, a bare stdlib `json.loads` loop, and the whole gate (`Gate.scan`:
parsing, the default dataset.schema rules, conversation structure, think tags and every
quality key; then the quality figures and length statistics as the stage computes them; the
project's default config) in one process and with `--workers` processes (validation.workers).
The four take turns for `--repeat` rounds and each round's ratio to bare orjson is taken within
that round, so load from other work on a shared machine moves both sides of it. Prints the
median and the range of rows per second and of the ratios, by the wall clock and by CPU time
(this process and its workers): on a machine whose cores other work keeps busy, the CPU figures
say what each reader costs, and the wall-clock ones what it got.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
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


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the gate's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def spread(values: list[float], fmt: str) -> str:
    """`median (min-max)`."""
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
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
                checks = g.quality.checks(g.upstream_share())
                g.quality.length_stats()
                assert g.valid_rows == args.rows and not g.errors and checks["duplicate_share"]["value"] == 0

            return run

        readers = {
            "bare orjson.loads loop": bare_orjson,
            "bare json.loads loop (stdlib)": bare_json,
            "validation gate, 1 process": gate(1),
            f"validation gate, {args.workers} processes": gate(args.workers),
        }
        wall: dict[str, list[float]] = {label: [] for label in readers}
        cpu: dict[str, list[float]] = {label: [] for label in readers}
        for _ in range(args.repeat):
            for label, fn in readers.items():
                t0, c0 = time.perf_counter(), cpu_seconds()
                fn()
                wall[label].append(args.rows / (time.perf_counter() - t0))
                cpu[label].append(args.rows / (cpu_seconds() - c0))
    print(f"{args.rows:,} rows, {size / args.rows:.0f} bytes/row, {os.cpu_count()} CPU cores, {args.repeat} rounds")
    print("| reader | rows/s | / bare orjson, same round | rows per CPU-second | / bare orjson, same round |")
    print("|---|---|---|---|---|")
    for label in readers:
        cells = []
        for rates in (wall, cpu):
            base = rates["bare orjson.loads loop"]
            ratios = [rate / orjson_rate for rate, orjson_rate in zip(rates[label], base, strict=True)]
            cells += [spread(rates[label], ",.0f"), spread(ratios, ".2f")]
        print(f"| {label} | {' | '.join(cells)} |")
    print("(each cell: median (min-max) over the rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
