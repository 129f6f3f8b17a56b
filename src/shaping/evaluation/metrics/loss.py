"""`loss`: assistant-token loss and perplexity on the held-out split for base, tuned and teacher, and
`gap_closed`: the share of the base-to-teacher gap the tuned model closed, (base - tuned) / (base - teacher):
0 is no better than the base, 1 as good as the teacher (None without a teacher, or when the teacher is no
better than the base)."""

from __future__ import annotations

from typing import Any

from shaping.evaluation.loss import assistant_loss
from shaping.evaluation.registry import EvalContext, metric


@metric("loss")
def loss(ctx: EvalContext) -> dict[str, Any]:
    batch = ctx.cfg.eval.batch_size
    conversations = ctx.conversations
    out: dict[str, Any] = {}
    with ctx.model("base") as base:
        max_len = int(getattr(base.config, "max_position_embeddings", 4096))  # score whole conversations
        out["base"] = assistant_loss(base, ctx.tokenizer, conversations, batch, max_len)
        if ctx.system_prompt:
            # the teacher scores its own held-out replies with the identity in its prompt
            with_system = [[{"role": "system", "content": ctx.system_prompt}, *c] for c in conversations]
            out["teacher"] = assistant_loss(base, ctx.tokenizer, with_system, batch, max_len)
    with ctx.model("tuned") as tuned:
        out["tuned"] = assistant_loss(tuned, ctx.tokenizer, conversations, batch, max_len)
    if "teacher" in out:
        out["gap_closed"] = gap_closed(out["base"]["loss"], out["teacher"]["loss"], out["tuned"]["loss"])
    return out


def gap_closed(base: float, teacher: float, tuned: float) -> float | None:
    gap = base - teacher
    return round((base - tuned) / gap, 4) if gap > 0 else None
