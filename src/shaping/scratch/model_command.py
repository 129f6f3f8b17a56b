"""What the model commands (src/generate.py, src/score.py) share: a model folder, an optional LoRA
adapter and a device on the command line; the model loaded once; one JSON report on stdout; a
mistake the user can fix (ShapingError) as one `error: ...` line on stderr and exit status 1."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shaping.errors import ShapingError
from shaping.scratch.runs import LoadedModel, load_model

# body(args, load) -> the command's report; `load()` loads the model on first call, so a command can
# check its cheap inputs (a missing file) before paying for the model
CommandBody = Callable[[argparse.Namespace, Callable[[], LoadedModel]], dict[str, Any]]


def read_text_file(path: Path) -> str:
    if not path.is_file():
        raise ShapingError(f"{path}: file not found")
    return path.read_text(encoding="utf-8")


def run_model_command(
    argv: list[str], description: str, add_arguments: Callable[[argparse.ArgumentParser], None], body: CommandBody
) -> int:
    """Parse `argv` (the model folder, the command's own arguments, --adapter, --device), run `body`
    and print {"model", "adapter", "kind", **report} as JSON. Returns the exit status."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", help="a run folder: models/pretrain, models/base, a checkpoint")
    add_arguments(parser)
    parser.add_argument("--adapter", help="a PEFT adapter folder (models/adapter) to apply")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    loaded: list[LoadedModel] = []

    def load() -> LoadedModel:
        if not loaded:
            loaded.append(load_model(args.model, args.adapter, args.device))
        return loaded[0]

    try:
        report = body(args, load)
        header = {"model": args.model, "adapter": args.adapter, "kind": load().kind}
    except ShapingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({**header, **report}, ensure_ascii=False, indent=2))
    return 0
