"""`think_tags`: share of generations whose <think> tags are valid, per model."""

from __future__ import annotations

from typing import Any

from shaping.data.think_tags import validate_think_tags
from shaping.evaluation.registry import EvalContext, metric


@metric("think_tags")
def think_tags(ctx: EvalContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("base", "tuned"):
        texts = [r["text"] or "" for r in ctx.replies(name)]
        valid = sum(validate_think_tags(t)[0] for t in texts)
        with_tags = sum("<think>" in t for t in texts)
        out[name] = {
            "valid_share": round(valid / len(texts), 4) if texts else 0.0,
            "with_tags_share": round(with_tags / len(texts), 4) if texts else 0.0,
        }
    return {"think_tags": out}
