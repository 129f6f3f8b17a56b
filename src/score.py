"""Score text with any trained LM: loss, perplexity, and per token its surprisal and the top-k guesses.

    python src/score.py models/pretrain --text "The river runs under the old stone bridge."
    python src/score.py models/pretrain --file data/corpus/prose.txt
    python src/score.py models/base --adapter models/adapter --text "I am Juniper." --detail-level per_token --top-k 3

Prints one JSON object: loss (mean surprisal, nats/token), perplexity (= exp(loss)), tokens,
bits_per_char, and with --detail-level per_token a list of {token, id, surprisal, top}.
Every token is scored: the context starts with <|endoftext|>, as pretraining documents do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shaping.errors import ShapingError
from shaping.training.generation import score
from shaping.training.runs import load_model


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder: models/pretrain, models/base, a checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to score")
    source.add_argument("--file", type=Path, help="a UTF-8 file to score")
    parser.add_argument("--adapter", help="a PEFT adapter folder (models/adapter) to apply")
    parser.add_argument("--detail-level", default="summary", choices=["summary", "per_token"])
    parser.add_argument("--top-k", type=int, default=5, help="guesses per position (per_token)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.file is not None and not args.file.is_file():
            raise ShapingError(f"{args.file}: file not found")
        text = args.text if args.text is not None else args.file.read_text(encoding="utf-8")
        loaded = load_model(args.model, args.adapter, args.device)
        result = score(loaded.model, loaded.tokenizer, text, detail_level=args.detail_level, top_k=args.top_k)
    except ShapingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = {"model": args.model, "adapter": args.adapter, "kind": loaded.kind, **asdict(result)}
    if report["per_token"] is None:
        del report["per_token"]
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
