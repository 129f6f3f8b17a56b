"""eval.metrics for a run trained on Tinker (src/evaluate.py calls this when the adapter is a reference):
base and tuned are the service's sampling clients; `loss` comes from prompt logprobs over the tokens
training scored, and the metrics built on replies run unchanged on the clients' greedy replies."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from shaping.config.schema import Config
from shaping.errors import ShapingError
from shaping.evaluation.registry import METRICS, EvalContext, check_metric_names
from shaping.inference.types import ChatRequest
from shaping.integrations.tinker.client import TinkerReference, service_client
from shaping.integrations.tinker.renderers import SupervisedRenderer, resolve_renderer_name
from shaping.integrations.tinker.sampling import TinkerSampler
from shaping.integrations.tinker.supervised import load_supervised_renderer


def assistant_loss(
    sampler: TinkerSampler, renderer: SupervisedRenderer, conversations: list[list[dict[str, Any]]]
) -> dict[str, Any]:
    """Mean next-token loss over assistant tokens (the mask training uses), from prompt logprobs."""
    encoded = [renderer.supervised(messages, train_on_prompt=False) for messages in conversations]
    futures = [sampler.client.compute_logprobs(sampler.tinker.ModelInput.from_ints(ids)) for ids, _ in encoded]
    total, count = 0.0, 0
    for (_, mask), future in zip(encoded, futures, strict=True):
        logprobs = future.result()  # logprobs[i] = log p(token i | tokens < i); None at 0
        for lp, m in zip(logprobs[1:], mask[1:], strict=True):
            if m and lp is not None:
                total -= float(lp)
                count += 1
    if count == 0:
        raise ShapingError("no assistant tokens to score (is the renderer's mask empty?)")
    loss = total / count
    return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 4), "tokens": count}


@dataclass
class TinkerEvalContext(EvalContext):
    """base and tuned are sampling clients: replies come from the service, loss from prompt logprobs."""

    samplers: dict[str, TinkerSampler] = field(default_factory=dict)
    renderer: SupervisedRenderer | None = None

    def model(self, name: str) -> NoReturn:
        raise ShapingError(
            "this metric needs the model's weights in this process; a Tinker-trained run offers "
            "loss, samples, think_tags, judge and identity (set eval.metrics accordingly)"
        )

    def replies(self, name: str) -> list[dict[str, Any]]:
        if name not in self._replies:
            prompts = self.prompts
            if name == "teacher":
                if not self.system_prompt:
                    raise ShapingError("the teacher's replies need models.teacher with a sysprompt or sysprompt_file")
                system = {"role": "system", "content": self.system_prompt}
                prompts = [[system, *(m for m in p if m["role"] != "system")] for p in prompts]
            sampler = self.samplers["base" if name == "teacher" else name]
            greedy = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": self.cfg.eval.samples.max_new_tokens}
            replies: list[dict[str, Any]] = [{} for _ in prompts]
            for i, r in sampler.sample([ChatRequest(messages=p) for p in prompts], greedy):
                replies[i] = {"text": r.text, "finish_reason": r.finish_reason, "tokens": r.completion_tokens}
            self._replies[name] = replies
        return self._replies[name]

    def _loss(self, name: str, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
        assert self.renderer is not None
        return assistant_loss(self.samplers[name], self.renderer, conversations)

    def loss(self) -> dict[str, Any]:
        """The `loss` metric's figures (base, teacher = base with the system prompt, tuned)."""
        out = {"base": self._loss("base", self.conversations)}
        if self.system_prompt:
            system = {"role": "system", "content": self.system_prompt}
            out["teacher"] = self._loss("base", [[system, *c] for c in self.conversations])
        out["tuned"] = self._loss("tuned", self.conversations)
        return out


def evaluate_reference(
    cfg: Config, rows: list[dict[str, Any]], reference_file: Path, system_prompt: str | None, out_dir: Path
) -> tuple[EvalContext, dict[str, Any]]:
    """eval.metrics for a run trained on Tinker: base and tuned are the service's sampling clients for the
    base model and the trained weights. `loss` comes from prompt logprobs; the metrics built on replies
    (samples, think_tags, judge, identity) run unchanged on the clients' greedy replies."""
    names = list(cfg.eval.metrics)
    check_metric_names(names)
    ref = TinkerReference.read(reference_file)
    renderer = load_supervised_renderer(resolve_renderer_name(ref.renderer, ref.base_model), ref.base_model)
    service = service_client()
    ctx = TinkerEvalContext(
        cfg=cfg,
        tokenizer=renderer.tokenizer,
        rows=rows,
        tuned=None,  # type: ignore[arg-type]  # the weights stay on the service
        base=None,
        system_prompt=system_prompt,
        out_dir=out_dir,
        renderer=renderer,
        samplers={
            "base": TinkerSampler.connect(service, None, ref.base_model, renderer, cfg.seed),
            "tuned": TinkerSampler.connect(service, ref.model_path, ref.base_model, renderer, cfg.seed),
        },
    )
    ctx.details_dir.mkdir(parents=True, exist_ok=True)  # a DVC output even when no metric writes there
    results: dict[str, Any] = {}
    for name in names:
        found = ctx.loss() if name == "loss" else METRICS[name](ctx)
        for key, value in found.items():
            merged = results.get(key)
            results[key] = {**merged, **value} if isinstance(value, dict) and isinstance(merged, dict) else value
    return ctx, results
