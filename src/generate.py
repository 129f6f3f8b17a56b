"""Generate text from any trained LM: a pretrain run, models/base, a checkpoint, with or without a LoRA adapter.

    python src/generate.py models/pretrain --prompt "The river" --max-new-tokens 40 --temperature 0
    python src/generate.py models/pretrain --prompt "Once" --temperature 0.8 --top-k 50 --top-p 0.95 \\
        --seed 1 --num-return-sequences 3 --stop "." --stop "\\n"
    python src/generate.py models/base --adapter models/adapter --chat "Who are you?"
    python src/generate.py models/pretrain/checkpoints/step-000100 --prompt-file prompt.txt

Prints one JSON object: the prompt, the settings, and per sequence its text, tokens_generated,
eos_terminated and stopped_by (eos | stop_sequence | max_new_tokens | max_length).
temperature 0 is greedy. --chat wraps the prompt as a user turn in the model's chat template.
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

from shaping.scratch.generation import generate
from shaping.scratch.model_command import read_text_file, run_model_command
from shaping.scratch.runs import LoadedModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the text to continue")
    source.add_argument("--prompt-file", type=Path, help="a UTF-8 file holding the prompt")
    source.add_argument("--chat", help="a user message, rendered with the chat template")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--stop", action="append", default=[], help="a stop sequence (repeatable)")
    parser.add_argument("--no-stop-on-eos", action="store_true", help="keep going past the EOS token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-return-sequences", type=int, default=1)


def run(args: argparse.Namespace, load: Callable[[], LoadedModel]) -> dict[str, Any]:
    loaded = load()
    if args.chat is not None:
        messages = [{"role": "user", "content": args.chat}]
        prompt = str(loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    elif args.prompt_file is not None:
        prompt = read_text_file(args.prompt_file)
    else:
        prompt = args.prompt
    results = generate(
        loaded.model,
        loaded.tokenizer,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_sequences=args.stop,
        stop_on_eos=not args.no_stop_on_eos,
        seed=args.seed,
        num_return_sequences=args.num_return_sequences,
    )
    return {
        "prompt": prompt,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("model", "adapter", "prompt", "prompt_file", "chat")
        },
        "outputs": [asdict(r) for r in results],
    }


def main(argv: list[str]) -> int:
    return run_model_command(argv, __doc__.splitlines()[0], add_arguments, run)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
