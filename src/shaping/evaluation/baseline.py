"""Comparing with a baseline run: another git rev, a DVC experiment, or a metrics JSON file.

`eval.baseline` is read from git (`git show <rev>:eval/metrics.json`; the metrics file is not in
DVC's cache, so every commit and every experiment carries it). A DVC experiment is found by name
among its refs (refs/exps/.../<name>, what `dvc exp list` names), without taking DVC's lock,
which the running stage holds. Deltas are reported for every number both runs have; the checks
in eval.baseline_checks fail the stage when worse than the baseline by more than the tolerance.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from shaping.config.schema import BaselineCheck
from shaping.errors import ShapingError
from shaping.evaluation.guards import lookup

SKIP = ("guards", "baseline_delta")  # bookkeeping, not figures to compare


def _git(*args: str) -> str | None:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def resolve_baseline(ref: str) -> str:
    """The commit of a git rev or of a DVC experiment named `ref`."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit:
        return commit
    listing = _git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps") or ""
    found = [line.split()[0] for line in listing.splitlines() if line.rsplit("/", 1)[-1] == ref]
    if len(found) > 1:
        raise ShapingError(f"eval.baseline={ref}: {len(found)} DVC experiments have this name; give its commit instead")
    if not found:
        raise ShapingError(
            f"eval.baseline={ref}: not a metrics JSON file, a git rev or a DVC experiment name (see `dvc exp list`)"
        )
    return found[0]


def read_baseline(ref: str, metrics_path: str) -> tuple[dict[str, Any], str]:
    """(the baseline's metrics, where they were read): a JSON file, or `metrics_path` at a rev."""
    path = Path(ref)
    if path.suffix == ".json" and path.is_file():
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        commit = resolve_baseline(ref)
        shown = _git("show", f"{commit}:{metrics_path}")
        if shown is None:
            raise ShapingError(f"eval.baseline={ref}: {metrics_path} is not committed at {commit[:8]}")
        text, source = shown, f"{ref} ({commit[:8]})"
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as err:
        raise ShapingError(f"eval.baseline={ref}: {metrics_path} is not valid JSON ({err.msg})") from None
    if not isinstance(metrics, dict):
        raise ShapingError(f"eval.baseline={ref}: {metrics_path} is not a JSON object")
    return metrics, source


def metric_deltas(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """current - baseline for every number both have, nested as in metrics.json."""
    out: dict[str, Any] = {}
    for key, value in current.items():
        if key in SKIP or key not in baseline:
            continue
        other = baseline[key]
        if isinstance(value, dict) and isinstance(other, dict):
            nested = metric_deltas(value, other)
            if nested:
                out[key] = nested
        elif _number(value) and _number(other):
            out[key] = round(value - other, 6)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_baseline_config(checks: list[BaselineCheck], tolerance: float) -> None:
    """Bad settings name their key (evaluate calls this before loading any model)."""
    for i, check in enumerate(checks):
        if check.better not in ("lower", "higher"):
            raise ShapingError(f"eval.baseline_checks[{i}].better={check.better!r}: must be lower or higher")
    if tolerance < 0:
        raise ShapingError(f"eval.baseline_tolerance={tolerance}: must be 0 or more (a share of the baseline value)")


def check_baseline(
    current: dict[str, Any], baseline: dict[str, Any], checks: list[BaselineCheck], tolerance: float, source: str
) -> list[dict[str, Any]]:
    """One result per check: {metric, value, baseline, passed, message}. A check fails when the
    metric is worse than the baseline's by more than tolerance x |baseline value|."""
    check_baseline_config(checks, tolerance)
    results = []
    for check in checks:
        value, base = lookup(current, check.metric), lookup(baseline, check.metric)
        if not (_number(value) and _number(base)):
            missing = "this run" if not _number(value) else f"the baseline {source}"
            results.append(
                {
                    "metric": check.metric,
                    "value": value if _number(value) else None,
                    "baseline": base if _number(base) else None,
                    "passed": False,
                    "message": f"{check.metric}: no such numeric metric in {missing}",
                }
            )
            continue
        worse = value - base if check.better == "lower" else base - value
        allowed = tolerance * abs(base)
        passed = worse <= allowed
        message = (
            "ok"
            if passed
            else f"{check.metric} = {value:g} against {base:g} at baseline {source}: worse by {worse:g}, "
            f"more than eval.baseline_tolerance {tolerance:g} x {abs(base):g} = {allowed:g} ({check.better} is better)"
        )
        results.append({"metric": check.metric, "value": value, "baseline": base, "passed": passed, "message": message})
    return results
