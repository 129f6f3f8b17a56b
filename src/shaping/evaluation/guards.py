"""Guards (mahsm's metric_guard): bounds on metrics that fail the evaluate stage."""

from __future__ import annotations

from typing import Any

from shaping.config.schema import GuardConfig


def lookup(metrics: dict[str, Any], dotted: str) -> Any:
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_guards(metrics: dict[str, Any], guards: list[GuardConfig]) -> list[dict[str, Any]]:
    """One result per guard: {metric, value, min, max, passed, message}."""
    results = []
    for guard in guards:
        value = lookup(metrics, guard.metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            results.append(
                {
                    "metric": guard.metric,
                    "value": None,
                    "min": guard.min,
                    "max": guard.max,
                    "passed": False,
                    "message": f"{guard.metric}: no such numeric metric",
                }
            )
            continue
        problems = []
        if guard.min is not None and value < guard.min:
            problems.append(f"{guard.metric} = {value:g} is below the guard's min {guard.min:g}")
        if guard.max is not None and value > guard.max:
            problems.append(f"{guard.metric} = {value:g} is above the guard's max {guard.max:g}")
        results.append(
            {
                "metric": guard.metric,
                "value": value,
                "min": guard.min,
                "max": guard.max,
                "passed": not problems,
                "message": "; ".join(problems) or "ok",
            }
        )
    return results
