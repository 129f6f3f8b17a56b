"""`samples`: greedy replies of base and tuned to fixed held-out prompts, written to
eval/samples.jsonl, with distinct-n, repetition rate, mean length and share ending in EOS."""

from __future__ import annotations

from typing import Any

from shaping.evaluation.registry import EvalContext, metric
from shaping.evaluation.samples import sample_stats
from shaping.io import write_jsonl


@metric("samples")
def samples(ctx: EvalContext) -> dict[str, Any]:
    replies = {name: ctx.replies(name) for name in ("base", "tuned")}
    rows = []
    for i, (row, prompt) in enumerate(zip(ctx.rows, ctx.prompts, strict=False)):
        record: dict[str, Any] = {
            "id": row["id"],
            "prompt": prompt[-1]["content"],
            "reference": row["messages"][-1]["content"],
        }
        for name, got in replies.items():
            record[name] = got[i]["text"]
            record[f"{name}_finish"] = got[i]["finish_reason"]
        rows.append(record)
    write_jsonl(ctx.out_dir / "samples.jsonl", rows)
    return {"samples": {name: sample_stats(got) for name, got in replies.items()}}
