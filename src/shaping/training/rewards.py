"""Reward functions for train=grpo, composed in config (`train.rewards`) from a registry.

    train:
      rewards:
        - {name: eos, weight: 1.0, args: {within: 48}}
        - {name: length_band, weight: 0.5, args: {min: 8, max: 64, unit: tokens}}
        - {name: think_tags, weight: 0.5}
        - {name: "mypkg.rewards:brevity", weight: 1.0, args: {limit: 40}}

Registry (each scores one sampled reply; TRL sums them with their weights and logs each one's mean as
`rewards/<name>/mean`):

    length_band   1.0 when the reply's length is within [min, max] (unit: tokens or chars), else 0.0
    eos           1.0 when the reply ended with an end-of-sequence token within `within` tokens, else 0.0
    think_tags    1.0 when its <think> tags are valid (shaping.data.think_tags, the validate stage's check;
                  required=true: and there is at least one complete block), else 0.0

Any other name of the form `pkg.module:function` is a user callable with TRL's reward signature,
`function(prompts, completions, completion_ids, **kwargs) -> list[float | None]` (completions are
conversational: `[{"role": "assistant", "content": ...}]` each), called with its `args` as keyword
arguments too. A reward that raises stops training with an error naming the reward and the step.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from shaping.config.schema import RewardConfig
from shaping.data.think_tags import extract_thinking, validate_think_tags
from shaping.errors import ShapingError

RewardFn = Callable[..., list[float | None]]
UNITS = ("tokens", "chars")


def completion_text(completion: Any) -> str:
    """A TRL completion's text: a string (standard format) or a list of messages (conversational)."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion)


def length_band(min: int, max: int, unit: str = "tokens") -> RewardFn:
    def reward(completions: list[Any], completion_ids: list[list[int]], **_: Any) -> list[float | None]:
        if unit == "tokens":
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c)) for c in completions]
        return [1.0 if min <= n <= max else 0.0 for n in lengths]

    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}: choose tokens or chars")
    if not 0 <= min <= max:
        raise ValueError(f"min={min}, max={max}: need 0 <= min <= max")
    return reward


def eos(within: int, eos_token_ids: Iterable[int] = ()) -> RewardFn:
    stops = set(eos_token_ids)

    def reward(completion_ids: list[list[int]], **_: Any) -> list[float | None]:
        return [1.0 if ids and ids[-1] in stops and len(ids) <= within else 0.0 for ids in completion_ids]

    if within < 1:
        raise ValueError(f"within={within}: must be at least 1 token")
    if not stops:
        raise ValueError("the tokenizer has no end-of-sequence token")
    return reward


def think_tags(required: bool = False) -> RewardFn:
    def reward(completions: list[Any], **_: Any) -> list[float | None]:
        scores: list[float | None] = []
        for completion in completions:
            text = completion_text(completion)
            ok = validate_think_tags(text)[0] and (not required or bool(extract_thinking(text)))
            scores.append(1.0 if ok else 0.0)
        return scores

    return reward


# name -> factory(**args) -> reward(prompts, completions, completion_ids, **kwargs)
REGISTRY: dict[str, Callable[..., RewardFn]] = {"length_band": length_band, "eos": eos, "think_tags": think_tags}
# what the trainer supplies to a registry factory, beside the config's args
SUPPLIED = {"eos": ("eos_token_ids",)}


class NamedReward:
    """A reward as TRL calls it: `__name__` is the name TRL logs (`rewards/<name>/mean`); an exception in
    it becomes a ShapingError naming the reward, where it is configured and the training step."""

    def __init__(self, name: str, where: str, fn: RewardFn) -> None:
        self.__name__ = name
        self.where = where
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        try:
            return self.fn(*args, **kwargs)
        except Exception as err:
            state = kwargs.get("trainer_state")
            step = f"step {state.global_step + 1}" if state is not None else "an unknown step"
            raise ShapingError(
                f"reward {self.__name__} ({self.where}) raised at training {step}: {type(err).__name__}: {err}"
            ) from err


def load_callable(reference: str, where: str) -> Callable[..., Any]:
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ShapingError(f"{where}={reference!r}: cannot import module {module_name!r} ({err})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise ShapingError(f"{where}={reference!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ShapingError(f"{where}={reference!r}: {attr!r} is not callable")
    return fn


def _check_args(fn: Callable[..., Any], args: dict[str, Any], where: str, supplied: Iterable[str] = ()) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n in params if n not in supplied]
    for key in args:
        if key not in params or key in supplied:
            raise ShapingError(f"{where}.args.{key}: unknown argument; it takes {', '.join(names) or 'none'}")


def build_rewards(
    specs: list[RewardConfig], eos_token_ids: Iterable[int] = (), where: str = "train.rewards"
) -> tuple[list[NamedReward], list[float]]:
    """The reward functions of `train.rewards` and their weights; a bad entry names its key."""
    if not specs:
        raise ShapingError(
            f"{where}: empty; train=grpo needs at least one reward, e.g. "
            "[{name: eos, weight: 1.0, args: {within: 48}}]"
        )
    rewards: list[NamedReward] = []
    weights: list[float] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        here = f"{where}[{i}]"
        name = str(spec.name)
        args = dict(spec.args or {})
        if name in REGISTRY:
            factory = REGISTRY[name]
            supplied = SUPPLIED.get(name, ())
            _check_args(factory, args, here, supplied)
            extra = {"eos_token_ids": list(eos_token_ids)} if "eos_token_ids" in supplied else {}
            try:
                fn = factory(**args, **extra)
            except TypeError as err:
                raise ShapingError(f"{here}.args: {err}") from None
            except ValueError as err:
                raise ShapingError(f"{here}.args ({name}): {err}") from None
            label = name
        elif ":" in name:
            user = load_callable(name, f"{here}.name")
            _check_args(user, args, here)
            fn = functools.partial(user, **args) if args else user
            label = name.rsplit(":", 1)[1].rsplit(".", 1)[-1]
        else:
            raise ShapingError(
                f"{here}.name={name!r}: unknown reward; choose one of {', '.join(REGISTRY)} or a callable "
                "'pkg.module:function'"
            )
        if label in seen:
            raise ShapingError(
                f"{here}.name={name!r}: the same reward as {where}[{seen[label]}]; each reward once "
                "(TRL logs each one's mean under its name)"
            )
        seen[label] = i
        if not isinstance(spec.weight, int | float):
            raise ShapingError(f"{here}.weight={spec.weight!r}: must be a number")
        rewards.append(NamedReward(label, here, fn))
        weights.append(float(spec.weight))
    return rewards, weights
