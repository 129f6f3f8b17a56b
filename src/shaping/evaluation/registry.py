"""The metric registry: each metric is a small named function over an EvalContext.

A metric module decorates its function with `@metric("name")` and returns a dict of numbers
(nested one level per model: {"base": {...}, "tuned": {...}}), merged into eval/metrics.json.
Adding a metric is one file in shaping/evaluation/metrics/ and its name in `eval.metrics`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.evaluation.samples import greedy_replies, prompts_of
from shaping.inference import ModelRegistry

MetricFn = Callable[["EvalContext"], dict[str, Any]]
METRICS: dict[str, MetricFn] = {}


def metric(name: str) -> Callable[[MetricFn], MetricFn]:
    def register(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return register


@dataclass
class EvalContext:
    """What metrics share: the config, the held-out rows, the models, cached generations."""

    cfg: Config
    tokenizer: PreTrainedTokenizerBase
    rows: list[dict[str, Any]]
    tuned: PreTrainedModel
    # None: base = `tuned` with its LoRA adapter disabled. A QLoRA adapter's `tuned` sits on the 4-bit
    # base it trained on, so its base comes separately, unquantized (the model users start from)
    base: PreTrainedModel | None
    system_prompt: str | None
    out_dir: Path
    _replies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _registry: ModelRegistry | None = None

    @property
    def details_dir(self) -> Path:
        """Per-sample records of the metrics that make them (judge.jsonl, claims.jsonl, ...)."""
        return self.out_dir / "details"

    @property
    def registry(self) -> ModelRegistry:
        """`models.<name>` (the judge, ...), built on first use: a local judge loads its own model."""
        if self._registry is None:
            self._registry = ModelRegistry(self.cfg.models, seed=self.cfg.seed)
        return self._registry

    @property
    def conversations(self) -> list[list[dict[str, str]]]:
        """Held-out conversations without any system message (what the student sees)."""
        return [[m for m in r["messages"] if m["role"] != "system"] for r in self.rows]

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return prompts_of(self.rows, self.cfg.eval.samples.num_prompts)

    @contextlib.contextmanager
    def model(self, name: str) -> Iterator[PreTrainedModel]:
        """`base` or `tuned`; with LoRA (not QLoRA), base is the tuned model with its adapter disabled."""
        if name == "tuned":
            yield self.tuned
        elif name == "base" and self.base is not None:
            yield self.base
        elif name == "base":
            with self.tuned.disable_adapter():  # type: ignore[operator]
                yield self.tuned
        else:
            raise ValueError(f"unknown model {name!r}: base or tuned")

    def replies(self, name: str) -> list[dict[str, Any]]:
        """Greedy replies of `name` (base, tuned, or teacher: base with the system prompt) to the
        fixed prompts, generated once and shared by metrics."""
        if name not in self._replies:
            prompts = self.prompts
            if name == "teacher":
                if not self.system_prompt:
                    raise ShapingError("the teacher's replies need models.teacher with a sysprompt or sysprompt_file")
                system = {"role": "system", "content": self.system_prompt}
                prompts = [[system, *(m for m in p if m["role"] != "system")] for p in prompts]
            with self.model("base" if name == "teacher" else name) as model:
                self._replies[name] = greedy_replies(
                    model, self.tokenizer, prompts, self.cfg.eval.samples.max_new_tokens, self.cfg.eval.batch_size
                )
        return self._replies[name]


def check_metric_names(names: list[str]) -> None:
    """Fail early (before any model loads) on a metric name the registry does not know."""
    from shaping.evaluation import metrics as _builtin  # noqa: F401  registers the built-in metrics

    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ShapingError(f"eval.metrics: unknown {unknown}; available: {', '.join(sorted(METRICS))}")


def run_metrics(ctx: EvalContext, names: list[str]) -> dict[str, Any]:
    check_metric_names(names)
    results: dict[str, Any] = {}
    for name in names:
        for key, value in METRICS[name](ctx).items():
            if isinstance(value, dict) and isinstance(results.get(key), dict):
                results[key] = {**results[key], **value}
            else:
                results[key] = value
    return results
