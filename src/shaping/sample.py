"""Print N random records of a synthesized JSONL for review.

    python -m shaping.sample data/synth/identity_distillation/samples.jsonl            # 10, truncated
    python -m shaping.sample data/synth/identity_distillation/samples.jsonl -n 3 --full
    python -m shaping.sample outputs/.../errors.jsonl -n 5 --seed 7

Reads the file once (reservoir sampling, so any size works); a malformed line is an error
naming it. Chat rows show the id, the last user prompt and the last assistant reply;
`__ERROR__` records show their error type and message.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from shaping.errors import ShapingError
from shaping.io import iter_jsonl


def reservoir(path: str, n: int, seed: int) -> list[tuple[int, dict[str, Any]]]:
    rng = random.Random(seed)
    chosen: list[tuple[int, dict[str, Any]]] = []
    for seen, (lineno, row) in enumerate(iter_jsonl(path)):
        if len(chosen) < n:
            chosen.append((lineno, row))
        else:
            slot = rng.randint(0, seen)
            if slot < n:
                chosen[slot] = (lineno, row)
    return sorted(chosen, key=lambda item: item[0])


def _last(messages: Any, role: str) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == role:
                return str(message.get("content", ""))
    return ""


def render(lineno: int, row: dict[str, Any], full: bool) -> str:
    def cut(text: str, width: int) -> str:
        flat = text if full else " ".join(text.split())
        return flat if full or len(flat) <= width else flat[: width - 1] + "…"

    if "__ERROR__" in row:
        error = row["__ERROR__"] if isinstance(row["__ERROR__"], dict) else {}
        head = f"=== line {lineno}: __ERROR__ {error.get('error')} ==="
        return f"{head}\n{cut(str(error.get('message', '')), 300)}"
    head = f"=== line {lineno}: id {row.get('id')} ==="
    if "messages" in row:
        prompt, reply = _last(row["messages"], "user"), _last(row["messages"], "assistant")
        return f"{head}\nPROMPT: {cut(prompt, 80)}\nRESPONSE: {cut(reply, 150)}"
    if "prompt" in row:  # preference pairs
        chosen, rejected = cut(str(row.get("chosen")), 150), cut(str(row.get("rejected")), 150)
        return f"{head}\nPROMPT: {cut(str(row['prompt']), 80)}\nCHOSEN: {chosen}\nREJECTED: {rejected}"
    return f"{head}\n{cut(str(row), 300)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shaping.sample", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="a JSONL file (samples.jsonl, errors.jsonl, a validated split)")
    parser.add_argument("-n", type=int, default=10, help="how many records (default 10)")
    parser.add_argument("--full", action="store_true", help="whole texts instead of truncated one-liners")
    parser.add_argument("--seed", type=int, default=0, help="which random records (default 0)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")
    try:
        chosen = reservoir(args.file, args.n, args.seed)
    except ShapingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not chosen:
        print(f"{args.file}: no records", file=sys.stderr)
        return 1
    print("\n\n".join(render(lineno, row, args.full) for lineno, row in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
