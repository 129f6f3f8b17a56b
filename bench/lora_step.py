"""One decoding step of a mixed batch: the base model alone, RowLoRA, and PEFT's per-row `adapter_names`.

    python bench/lora_step.py              # 8 rows, half on the adapter, 80 tokens of context, 1 torch thread
    python bench/lora_step.py --rows 64 --threads 2

The model and adapter are bench/generation_throughput.py's (the `tiny` architecture with random
weights, a random LoRA r=16 on all linear layers), built in a temp folder. Each figure is the best
of 3 timings of 64 decoding steps (ms per step), after a prefill of the context into a DynamicCache.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from generation_throughput import build_model

STEPS = 64


def step_ms(model: Any, ids: torch.Tensor, route: Callable[[], AbstractContextManager[dict[str, Any]]]) -> float:
    from transformers import DynamicCache

    best = float("inf")
    with torch.no_grad():
        for _ in range(3):
            cache = DynamicCache()
            with route() as extra:
                model(input_ids=ids, cache=cache, use_cache=True, **extra)
            start = time.perf_counter()
            for _ in range(STEPS):
                with route() as extra:
                    model(input_ids=ids[:, -1:], cache=cache, use_cache=True, **extra)
            best = min(best, (time.perf_counter() - start) / STEPS)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--context", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from shaping.inference.lora_rows import BASE_ADAPTER, RowLoRA

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, adapter_dir = build_model(Path(tmp))
        base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir, "tuned").eval()
    torch.manual_seed(0)
    ids = torch.randint(0, 4000, (args.rows, args.context))
    names = [BASE_ADAPTER if i % 2 == 0 else "tuned" for i in range(args.rows)]
    mixer = RowLoRA(tuned)
    print(f"{args.rows} rows (half on the adapter), {args.context} tokens of context, {args.threads} torch thread(s)")
    print(f"  base model alone            {step_ms(base, ids, lambda: contextlib.nullcontext({})):.2f} ms/step")
    print(f"  RowLoRA                     {step_ms(tuned, ids, lambda: mixer.rows(names)):.2f} ms/step")
    peft_rows = lambda: contextlib.nullcontext({"adapter_names": names})  # noqa: E731
    print(f"  PEFT adapter_names per row  {step_ms(tuned, ids, peft_rows):.2f} ms/step")


if __name__ == "__main__":
    main()
