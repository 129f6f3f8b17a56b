"""What the last `dvc repro` showed, for a person: held-out losses of base, teacher and tuned, the share of
the base-to-teacher gap the tuned model closed, identity adherence per model with its interval, and a
few held-out prompts with the base's and the tuned model's replies side by side. `make demo` ends with it.

    python src/summary.py                  # eval/metrics.json and eval/samples.jsonl
    python src/summary.py --eval-dir eval --examples 3
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

MODELS = ("base", "teacher", "tuned")
COLUMN = 48


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary(metrics: dict[str, Any], samples: list[dict[str, Any]], examples: int) -> str:
    lines = ["Held-out assistant-token loss (lower is better; teacher = base with the identity prompt):"]
    for name in MODELS:
        if isinstance(metrics.get(name), dict) and "loss" in metrics[name]:
            lines.append(f"  {name:<8} {metrics[name]['loss']:.4f}")
    if "gap_closed" in metrics:
        lines.append(f"  gap closed by tuning: {_number(metrics['gap_closed'], 2)} (0 = base, 1 = teacher)")
    adherence = metrics.get("adherence")
    if isinstance(adherence, dict):
        lines.append(
            f"Identity adherence: share of replies stating at least {adherence.get('min_facts', 1)} of the "
            f"identity's {adherence.get('facts', '?')} facts (95% bootstrap interval):"
        )
        for name in MODELS:
            figures = adherence.get(name)
            if isinstance(figures, dict):
                lines.append(
                    f"  {name:<8} {_number(figures.get('mean'), 2)} [{_number(figures.get('ci_low'), 2)}, "
                    f"{_number(figures.get('ci_high'), 2)}] over {figures.get('n', 0)} prompts"
                )
        difference = adherence.get("tuned_minus_base")
        if isinstance(difference, dict):
            lines.append(
                f"  tuned - base {_number(difference.get('mean'), 2)} [{_number(difference.get('ci_low'), 2)}, "
                f"{_number(difference.get('ci_high'), 2)}] (paired over the same prompts; above 0: tuning added it)"
            )
    shown = [s for s in samples if s.get("base") is not None and s.get("tuned") is not None][:examples]
    if shown:
        lines.append("Held-out prompts, base vs tuned (greedy, no system prompt):")
    for sample in shown:
        lines.append(f"  > {sample['prompt']}")
        left = textwrap.wrap(str(sample["base"]), COLUMN) or [""]
        right = textwrap.wrap(str(sample["tuned"]), COLUMN) or [""]
        lines.append(f"    {'base':<{COLUMN}} | tuned")
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            lines.append(f"    {a:<{COLUMN}} | {b}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", default="eval", help="the evaluate stage's folder (paths.eval_dir)")
    parser.add_argument("--examples", type=int, default=2, help="held-out prompts to show side by side")
    args = parser.parse_args(argv)
    eval_dir = Path(args.eval_dir)
    metrics_file = eval_dir / "metrics.json"
    if not metrics_file.is_file():
        print(f"{metrics_file}: not found; run `dvc repro` (or `make demo`) first", file=sys.stderr)
        return 1
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    samples_file = eval_dir / "samples.jsonl"
    samples = []
    if samples_file.is_file():
        samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(summary(metrics, samples, args.examples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
