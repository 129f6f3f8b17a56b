"""`identity`: for identity pipelines (context distillation), how often the student without the
system prompt says what the teacher (the base model with it) says. The teacher's greedy reply to
each fixed prompt is compared with base's and tuned's by sentence-embedding cosine; a reply at or
above eval.identity.similarity_threshold agrees (a blank reply, either side, never does). Base's
figure is the floor: what the model did before training. Every comparison goes to
details/identity.jsonl."""

from __future__ import annotations

from typing import Any

from shaping.evaluation.registry import EvalContext, metric
from shaping.inference.embeddings import paired_similarity
from shaping.io import write_jsonl


@metric("identity")
def identity(ctx: EvalContext) -> dict[str, Any]:
    threshold = ctx.cfg.eval.identity.similarity_threshold
    teacher = [r["text"] or "" for r in ctx.replies("teacher")]
    out: dict[str, Any] = {}
    records: list[dict[str, Any]] = [
        {"id": str(row["id"]), "prompt": prompt[-1]["content"], "teacher": text}
        for row, prompt, text in zip(ctx.rows, ctx.prompts, teacher, strict=False)
    ]
    for name in ("base", "tuned"):
        student = [r["text"] or "" for r in ctx.replies(name)]
        # each reply against the teacher's to the same prompt (a blank one, either side, agrees with nothing)
        paired = paired_similarity(ctx.cfg.eval.embedding_model, student, teacher)
        agree = [c >= threshold for c in paired]
        for record, cosine, agreed, text in zip(records, paired, agree, student, strict=True):
            record[name] = text
            record[f"{name}_similarity"] = round(cosine, 4)
            record[f"{name}_agrees"] = agreed
        out[name] = {
            "agreement": round(sum(agree) / len(agree), 4) if agree else 0.0,
            "mean_similarity": round(sum(paired) / len(paired), 4) if paired else 0.0,
        }
    write_jsonl(ctx.details_dir / "identity.jsonl", records)
    return {"identity": {**out, "prompts": len(teacher)}}
