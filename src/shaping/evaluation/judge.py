"""An LLM judge: a registry model scores replies against a rubric and answers in XML tags.

The judge is asked for

    <assessment>
      <criterion name="voice"><score>4</score><reason>...</reason></criterion>
      ...
    </assessment>

(shaping.inference.rubric's `rubric_messages`, which train=grpo's judge reward asks with too) and its
reply is read with `parse_assessment`. A reply that lacks a score for any criterion (or a request that
failed) is counted as unparseable; the criteria it did score still count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shaping.config.schema import JudgeConfig
from shaping.errors import ShapingError
from shaping.evaluation.stats import mean_with_ci
from shaping.inference import ChatBackend, ChatRequest
from shaping.inference.rubric import check_rubric, parse_assessment, rubric_messages

log = logging.getLogger(__name__)


@dataclass
class JudgeItem:
    """One reply to judge: who wrote it, to what prompt, and (optionally) a reference reply."""

    model: str
    id: str
    prompt: list[dict[str, str]]
    reply: str
    reference: str | None = None


def check_judge(cfg: JudgeConfig) -> tuple[float, float]:
    """check_rubric, and the interval settings: a bad value names its key before any request."""
    if not 0 < cfg.confidence < 1:
        raise ShapingError(f"eval.judge.confidence={cfg.confidence}: must be between 0 and 1, e.g. 0.95")
    if cfg.bootstrap_samples < 1:
        raise ShapingError(f"eval.judge.bootstrap_samples={cfg.bootstrap_samples}: must be at least 1, e.g. 1000")
    return check_rubric(cfg.rubric)


def judge_replies(backend: ChatBackend, cfg: JudgeConfig, items: list[JudgeItem]) -> list[dict[str, Any]]:
    """One record per item: the judge's raw reply, the scores read from it and what could not be read."""
    low, high = check_judge(cfg)
    names = [c.name for c in cfg.rubric.criteria]
    options = {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}
    requests = [
        ChatRequest(messages=rubric_messages(cfg.rubric, item.prompt, item.reply, item.reference), options=options)
        for item in items
    ]
    responses = backend.generate(requests) if requests else []  # every generation failed: nothing to ask
    records = []
    for item, response in zip(items, responses, strict=True):
        if response.is_success:
            assessment = parse_assessment(response.text or "", names, low, high)
            scores, problems = assessment.scores, assessment.problems
        else:
            scores, problems = dict.fromkeys(names), [f"request failed: {response.error}"]
        records.append(
            {
                "model": item.model,
                "id": item.id,
                "reply": item.reply,
                "judge_reply": response.text,
                "scores": scores,
                "parsed": not problems,
                "problems": problems,
                "error": response.error,
            }
        )
    return records


def summarize_judgements(
    records: list[dict[str, Any]], cfg: JudgeConfig, seed: int, failed: dict[str, int] | None = None
) -> dict[str, Any]:
    """Per model: each criterion's mean with its bootstrap interval over the replies that scored it,
    `judged` replies, `unparseable` ones (any criterion unread, failed judge requests included),
    `errors` (failed judge requests) and `failed`: the model's generations that failed, which were
    not judged and count in no interval (`failed` per model, from the caller)."""
    failed = failed or {}
    out: dict[str, Any] = {}
    for model in dict.fromkeys([*(r["model"] for r in records), *failed]):
        mine = [r for r in records if r["model"] == model]
        summary: dict[str, Any] = {
            "judged": len(mine),
            "unparseable": sum(not r["parsed"] for r in mine),
            "errors": sum(r["error"] is not None for r in mine),
            "failed": failed.get(model, 0),
        }
        for criterion in cfg.rubric.criteria:
            scores = [r["scores"][criterion.name] for r in mine if r["scores"][criterion.name] is not None]
            summary[criterion.name] = mean_with_ci(scores, cfg.confidence, cfg.bootstrap_samples, seed)
        out[model] = summary
    return out
