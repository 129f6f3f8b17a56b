"""On the demo: the share of the base-to-teacher gap closed (`gap_closed`) by `train=sft` and by
`train=distill` at about equal training time and at equal steps.

    make demo && python bench/distill_vs_sft.py                  # needs the demo's models/ and data/validated/
    python bench/distill_vs_sft.py --distill-steps 20 68          # the distill runs' max_steps

Works in a temporary copy of the workspace (its files, not .git or .venv), so the workspace's outputs
are never touched: for each run, `python -m shaping.config <overrides> 'eval.metrics=[loss]'`, then
`src/train.py` and `src/evaluate.py` on the params it writes. Prints steps, `gap_closed`, the train
stage's wall time and the process's CPU time per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", ".venv", "outputs", "multirun", ".dvc", "__pycache__")


def run(copy: Path, *cmd: str) -> tuple[float, float]:
    """Wall and user CPU seconds of one command in `copy` (which must succeed)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(copy / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=copy, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--distill-steps", type=int, nargs="+", default=[20, 68])
    args = parser.parse_args()
    if not (REPO / "models/base/config.json").is_file() or not (REPO / "data/validated/train.jsonl").is_file():
        raise SystemExit("run `make demo` first: this needs models/base and data/validated")
    runs = [("train=sft", [])] + [
        (f"train=distill train.max_steps={n}", ["train=distill", f"train.max_steps={n}"]) for n in args.distill_steps
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="distill-vs-sft-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(REPO, copy, ignore=IGNORE, symlinks=True)
        for label, overrides in runs:
            run(copy, "-m", "shaping.config", *overrides, "eval.metrics=[loss]")
            wall, cpu = run(copy, "src/train.py", "--params", "params.yaml")
            run(copy, "src/evaluate.py", "--params", "params.yaml")
            metrics = json.loads((copy / "eval/metrics.json").read_text())
            steps = json.loads((copy / "models/adapter/run.json").read_text())["details"]["steps"]
            rows.append((label, steps, metrics["gap_closed"], wall, cpu))
            print(f"{label}: done", file=sys.stderr)
    print(f"\nbase {metrics['base']['loss']:.4f}, teacher {metrics['teacher']['loss']:.4f}")
    print(f"{'run':<34} | steps | gap_closed | train wall s | train CPU s")
    for label, steps, gap, wall, cpu in rows:
        print(f"{label:<34} | {steps:>5} | {gap:>10.3f} | {wall:>12.1f} | {cpu:>11.1f}")


if __name__ == "__main__":
    main()
