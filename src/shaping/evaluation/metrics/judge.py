"""`judge`: a registry model (eval.judge.model) scores the base and tuned generations of `samples`
against eval.judge.rubric; per model and criterion a mean with a bootstrap interval, and the
count of unparseable judge replies. Every judgement goes to details/judge.jsonl."""

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
    for model in ("base", "tuned"):
        for row, prompt, reply in zip(ctx.rows, ctx.prompts, ctx.replies(model), strict=False):
            reference = row["messages"][-1]["content"] if cfg.show_reference else None
            items.append(
                JudgeItem(model=model, id=str(row["id"]), prompt=prompt, reply=reply["text"], reference=reference)
            )
    records = judge_replies(backend, cfg, items)
    write_jsonl(ctx.details_dir / "judge.jsonl", records)
    summary = summarize_judgements(records, cfg, ctx.cfg.seed)
    unparseable = sum(s["unparseable"] for s in summary.values())
    if unparseable:
        log.warning(
            "judge: %d of %d replies of models.%s unparseable (see %s)",
            unparseable,
            len(records),
            cfg.model,
            ctx.details_dir / "judge.jsonl",
        )
    return {"judge": {"unparseable": unparseable, **summary}}
