"""`loss`: assistant-token loss and perplexity on the held-out split for base, tuned and teacher."""

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
    return out
