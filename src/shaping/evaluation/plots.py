"""Plot data for `dvc plots show` / `dvc plots diff`: small JSON tables dvc.yaml's top-level
`plots` draw as bars (titles and axis labels are set there). Every file is written on every run,
empty when its metric did not run, so DVC never reports a missing plot file."""

from __future__ import annotations

from typing import Any

MODELS = ("base", "teacher", "tuned")


def plot_tables(metrics: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{file name: rows}: loss.json (held-out loss per model), judge.json (mean score per model and
    criterion, with its interval), identity.json (agreement with the teacher per model)."""
    loss = [
        {"model": name, "loss": metrics[name]["loss"], "perplexity": metrics[name]["perplexity"]}
        for name in MODELS
        if isinstance(metrics.get(name), dict) and "loss" in metrics[name]
    ]
    judge = []
    for name in MODELS:
        scores = metrics.get("judge", {}).get(name, {})
        for criterion, figures in scores.items():
            if isinstance(figures, dict) and figures.get("mean") is not None:
                judge.append(
                    {"model": name, "criterion": criterion, "model_criterion": f"{name}: {criterion}", **figures}
                )
    identity = [
        {"model": name, **figures}
        for name, figures in metrics.get("identity", {}).items()
        if name in MODELS and isinstance(figures, dict)
    ]
    return {"loss.json": loss, "judge.json": judge, "identity.json": identity}
