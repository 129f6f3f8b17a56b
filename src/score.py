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
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shaping.scratch.generation import score
from shaping.scratch.model_command import read_text_file, run_model_command
from shaping.scratch.runs import LoadedModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to score")
    source.add_argument("--file", type=Path, help="a UTF-8 file to score")
    parser.add_argument("--detail-level", default="summary", choices=["summary", "per_token"])
    parser.add_argument("--top-k", type=int, default=5, help="guesses per position (per_token)")


def run(args: argparse.Namespace, load: Callable[[], LoadedModel]) -> dict[str, Any]:
    text = args.text if args.text is not None else read_text_file(args.file)  # before the model: fails fast
    loaded = load()
    report = asdict(score(loaded.model, loaded.tokenizer, text, detail_level=args.detail_level, top_k=args.top_k))
    if report["per_token"] is None:
        del report["per_token"]
    return report


def main(argv: list[str]) -> int:
    return run_model_command(argv, __doc__.splitlines()[0], add_arguments, run)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
