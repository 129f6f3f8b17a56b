"""Checks of the `train` knobs that more than one method reads."""

from __future__ import annotations

from shaping.config.schema import TrainConfig
from shaping.errors import ShapingError


def check_sampling_knobs(train: TrainConfig, method: str, min_generations: int = 0) -> None:
    """A method that samples replies while it trains (GRPO, on-policy distillation) needs a positive
    `train.temperature` and `train.max_completion_length` (and, where it samples several replies per
    prompt, `train.num_generations` of at least `min_generations`): one error naming every bad key."""
    problems = []
    if train.temperature <= 0:
        problems.append(f"train.temperature={train.temperature} (use a temperature > 0)")
    if train.max_completion_length < 1:
        problems.append(f"train.max_completion_length={train.max_completion_length} (at least 1 token)")
    if train.num_generations < min_generations:
        problems.append(f"train.num_generations={train.num_generations} (at least {min_generations})")
    if problems:
        raise ShapingError(f"{method} samples its replies while it trains: " + "; ".join(problems))
