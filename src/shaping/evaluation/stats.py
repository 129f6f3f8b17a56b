"""Means with seeded bootstrap confidence intervals: a judge's scores over a few dozen replies
are noisy, and `dvc exp show` should say how noisy."""

from __future__ import annotations

from typing import Any

import numpy as np


def mean_with_ci(values: list[float], confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{mean, ci_low, ci_high, n}: the percentile bootstrap interval of the mean (`resamples`
    draws of n with replacement, seeded). No values: mean and bounds are None (n = 0)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    n = len(values)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, n, size=(max(1, resamples), n))].mean(axis=1)  # (resamples,)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {
        "mean": round(float(data.mean()), 4),
        "ci_low": round(float(low), 4),
        "ci_high": round(float(high), 4),
        "n": n,
    }
