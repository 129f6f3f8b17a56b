"""`judge`: a registry model (eval.judge.model) scores the base and tuned generations of `samples`
against eval.judge.rubric; per model and criterion a mean with a bootstrap interval, the count of
unparseable judge replies, and of generations that failed (not judged: there is no reply to
score). Every judgement, and every generation left unjudged, goes to details/judge.jsonl."""

from __future__ import annotations

import logging
from typing import Any, cast

from shaping.evaluation.judge import JudgeItem, check_judge, judge_replies, summarize_judgements
from shaping.evaluation.registry import EvalContext, metric
from shaping.inference import ChatBackend
from shaping.io import write_jsonl

log = logging.getLogger(__name__)


@metric("judge")
def judge(ctx: EvalContext) -> dict[str, Any]:
    cfg = ctx.cfg.eval.judge
    check_judge(cfg)  # before the judge model loads
    # an unknown name fails here, naming models.<name>; every registry backend (the async openai one
    # too) also answers a whole list of requests through generate(), which is all the judge needs
    backend = cast(ChatBackend, ctx.registry.backend(cfg.model))
    items = []
    failed: dict[str, list[dict[str, Any]]] = {"base": [], "tuned": []}
    for model in ("base", "tuned"):
        for row, prompt, reply in zip(ctx.rows, ctx.prompts, ctx.replies(model), strict=False):
            if reply.get("text") is None:  # the generation failed (a sampling service's error): nothing to judge
                skipped = {"model": model, "id": str(row["id"]), "reply": None, "skipped": "generation failed"}
                failed[model].append(skipped)
                continue
            reference = row["messages"][-1]["content"] if cfg.show_reference else None
            items.append(
                JudgeItem(model=model, id=str(row["id"]), prompt=prompt, reply=reply["text"], reference=reference)
            )
    records = judge_replies(backend, cfg, items)
    write_jsonl(ctx.details_dir / "judge.jsonl", [*records, *failed["base"], *failed["tuned"]])
    failed_counts = {model: len(rows) for model, rows in failed.items()}
    summary = summarize_judgements(records, cfg, ctx.cfg.seed, failed_counts)
    for model, count in failed_counts.items():
        if count:
            log.warning(
                "judge: %d of %d %s generations failed and were not judged (judge.%s.failed)",
                count,
                count + summary[model]["judged"],
                model,
                model,
            )
    unparseable = sum(s["unparseable"] for s in summary.values())
    if unparseable:
        log.warning(
            "judge: %d of %d replies of models.%s unparseable (see %s)",
            unparseable,
            len(records),
            cfg.model,
            ctx.details_dir / "judge.jsonl",
        )
    return {"judge": {"unparseable": unparseable, "failed": sum(failed_counts.values()), **summary}}
