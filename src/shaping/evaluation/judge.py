"""An LLM judge: a registry model scores replies against a rubric and answers in XML tags.

The judge is asked for

    <assessment>
      <criterion name="voice"><score>4</score><reason>...</reason></criterion>
      ...
    </assessment>

and its reply is read with `parse_assessment`. A reply that lacks a score for any criterion (or
a request that failed) is counted as unparseable; the criteria it did score still count.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from shaping.config.schema import JudgeConfig, RubricConfig
from shaping.errors import ShapingError
from shaping.evaluation.parsers import parse_assessment
from shaping.evaluation.stats import mean_with_ci
from shaping.inference import ChatBackend, ChatRequest

log = logging.getLogger(__name__)

_TAG_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


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


def check_rubric(rubric: RubricConfig, where: str = "eval.judge.rubric") -> tuple[float, float]:
    """The scale's (low, high); a rubric the judge cannot be asked about raises ShapingError."""
    if not rubric.criteria:
        raise ShapingError(f"{where}.criteria: empty; name at least one criterion, e.g. [{{name: voice}}]")
    for i, criterion in enumerate(rubric.criteria):
        if not _TAG_NAME.match(criterion.name):
            raise ShapingError(
                f"{where}.criteria[{i}].name={criterion.name!r}: must be usable as an XML tag "
                "(letters, digits, _ or -, not starting with a digit)"
            )
    names = [c.name.lower() for c in rubric.criteria]
    if len(set(names)) != len(names):
        raise ShapingError(f"{where}.criteria: names repeat ({', '.join(names)}); each criterion once")
    if len(rubric.scale) != 2 or not rubric.scale[0] < rubric.scale[1]:
        raise ShapingError(f"{where}.scale={list(rubric.scale)}: must be [lowest, highest], e.g. [1, 5]")
    return float(rubric.scale[0]), float(rubric.scale[1])


def judge_messages(rubric: RubricConfig, item: JudgeItem) -> list[dict[str, str]]:
    low, high = rubric.scale
    criteria = "\n".join(f"- {c.name}: {c.description}" if c.description else f"- {c.name}" for c in rubric.criteria)
    example = "\n".join(
        f'  <criterion name="{c.name}"><score>N</score><reason>one sentence</reason></criterion>'
        for c in rubric.criteria
    )
    system = (
        f"{rubric.instructions.strip()}\n\n"
        f"Score the assistant's reply on each criterion from {low:g} (worst) to {high:g} (best):\n{criteria}\n\n"
        f"Answer only with this XML, N a number from {low:g} to {high:g}:\n<assessment>\n{example}\n</assessment>"
    ).strip()
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in item.prompt if m["role"] != "system")
    user = f"<conversation>\n{conversation}\n</conversation>\n\n<reply>\n{item.reply}\n</reply>"
    if item.reference is not None:
        user += f"\n\n<reference>\n{item.reference}\n</reference>\n(The reference is a good reply, for comparison.)"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_replies(backend: ChatBackend, cfg: JudgeConfig, items: list[JudgeItem]) -> list[dict[str, Any]]:
    """One record per item: the judge's raw reply, the scores read from it and what could not be read."""
    low, high = check_judge(cfg)
    names = [c.name for c in cfg.rubric.criteria]
    options = {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}
    requests = [ChatRequest(messages=judge_messages(cfg.rubric, item), options=options) for item in items]
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
