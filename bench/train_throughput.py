"""Train-stage throughput: `train.precision=auto` + `gradient_checkpointing=auto` vs TRL's defaults.

    python bench/train_throughput.py [--steps 30] [--repeats 2]

TRL's SFTConfig defaults to bf16 autocast and gradient checkpointing. On a CPU without
native bf16 (no AMX) both cost time; `auto` picks fp32 without checkpointing there. This
runs the real train stage code (TRL SFTTrainer + PEFT LoRA) on the demo's validated data and
base model, the same steps for each setting, alternating settings, and prints tokens/s
(non-padding tokens / wall time of trainer.train()) and the ratio. Needs `make demo` first.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shaping.config import compose
from shaping.io import read_jsonl
from shaping.training import hf_peft
from shaping.training.hardware import cpu_has_native_bf16, pick_device

SETTINGS = {
    "auto (ours)": {"train.precision": "auto", "train.gradient_checkpointing": "auto"},
    "TRL defaults (bf16 + grad ckpt)": {"train.precision": "bf16", "train.gradient_checkpointing": "true"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train_file = Path("data/validated/train.jsonl")
    if not train_file.is_file() or not Path("models/base/config.json").is_file():
        print("needs the demo's outputs: run `make demo` first", file=sys.stderr)
        return 1
    rows = read_jsonl(train_file)
    figures: dict[str, list[float]] = {name: [] for name in SETTINGS}
    chosen: dict[str, str] = {}
    for _ in range(args.repeats):
        for name, overrides in SETTINGS.items():
            cfg = compose([f"{k}={v}" for k, v in overrides.items()] + [f"train.max_steps={args.steps}"])
            with tempfile.TemporaryDirectory() as tmp:
                report = hf_peft.train(cfg, rows, Path(tmp) / "adapter", Path(tmp) / "live")
            figures[name].append(report.metrics["tokens_per_second"])
            chosen[name] = f"{report.metrics['precision']}, ckpt={report.metrics['gradient_checkpointing']}"
    print(
        f"device {pick_device()}, native CPU bf16 (AMX): {cpu_has_native_bf16()}, "
        f"{args.steps} LoRA steps x {args.repeats} repeats, batch {cfg.train.batch_size}, {len(rows)} rows"
    )
    print("| setting | resolved | tokens/s (median) | runs |")
    print("|---|---|---|---|")
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, values in figures.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {chosen[name]} | {medians[name]:.0f} | {runs} |")
    ours, trl = medians["auto (ours)"], medians["TRL defaults (bf16 + grad ckpt)"]
    print(f"\nratio auto / TRL defaults: {ours / trl:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
