"""The demo's noise: the whole DAG over several seeds, and `gap_closed` and adherence as mean and spread,
so a difference between two rows of `dvc exp show` can be told from the noise of the seed.

    python bench/demo_seeds.py                       # seeds 0 1 2, the embedded default (minutes each)
    python bench/demo_seeds.py --seeds 0 1 2 3 4
    python bench/demo_seeds.py -S +experiment=smoke  # the seconds-long smoke config, e.g. to try it out
    python bench/demo_seeds.py -S lora.r=16          # the noise of another setting

Each seed is one `dvc exp run -S seed=<n>` in a temporary copy of the repository (its tracked and
untracked, not ignored, files; a git repo of its own), so the workspace is never touched; `seed` is
read by every stage, so each run rebuilds everything from the corpus on. Prints a table per seed and
the mean, sample standard deviation, minimum and maximum of each figure; `--json FILE` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SKIP = ("dvc.lock", "eval/", "metrics/", "dvclive/", "models/", "data/synth/", "data/validated/", "data/corpus/")


def sh(repo: Path, *cmd: str) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": path}
    proc = subprocess.run(list(cmd), cwd=repo, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def copy_repo(dest: Path) -> None:
    """The project's files as git sees them, less stage outputs, in a fresh git repo at `dest`."""
    listed = sh(REPO, "git", "ls-files", "--cached", "--others", "--exclude-standard").split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(SKIP):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, "git", "-c", "user.email=bench@example.com", "-c", "user.name=bench", "add", "-A")
    sh(dest, "git", "-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-qm", "bench")


def figures(metrics: dict[str, Any]) -> dict[str, float | None]:
    adherence = metrics.get("adherence", {})
    out: dict[str, float | None] = {"gap_closed": metrics.get("gap_closed")}
    for name in ("base", "teacher", "tuned"):
        out[f"{name}.loss"] = metrics.get(name, {}).get("loss")
        out[f"adherence.{name}"] = adherence.get(name, {}).get("mean")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="a `dvc exp run -S` override")
    parser.add_argument("--json", type=Path, help="write the per-seed figures and the summary here")
    args = parser.parse_args()
    per_seed: dict[int, dict[str, float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="demo-seeds-") as tmp:
        repo = Path(tmp) / "repo"
        copy_repo(repo)
        for seed in args.seeds:
            started = time.perf_counter()
            overrides = [a for o in [*args.overrides, f"seed={seed}"] for a in ("-S", o)]
            sh(repo, "dvc", "exp", "run", *overrides)
            metrics = json.loads((repo / "eval" / "metrics.json").read_text(encoding="utf-8"))
            per_seed[seed] = figures(metrics)
            print(f"seed {seed}: {json.dumps(per_seed[seed])} ({time.perf_counter() - started:.0f} s)", flush=True)
    names = list(next(iter(per_seed.values())))
    summary: dict[str, dict[str, float | None]] = {}
    print(f"\n| figure | mean | sd | min | max | over seeds {' '.join(map(str, args.seeds))} |")
    print("|---|---|---|---|---|---|")
    for name in names:
        values = [v for v in (per_seed[s][name] for s in args.seeds) if v is not None]
        row: dict[str, float | None] = {
            "mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
        }
        summary[name] = row
        cells = " | ".join("-" if v is None else f"{v:.3f}" for v in row.values())
        print(f"| {name} | {cells} | {len(values)} values |")
    if args.json:
        report = {"overrides": args.overrides, "per_seed": per_seed, "summary": summary}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
