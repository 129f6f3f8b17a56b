"""`claims`: claim extraction on SciFact-format files (eval.claims), for base and tuned:
CLAIM[c1] exact-match rate, evidence matched by string and by embedding similarity, relation
figures; every prediction to details/claims.jsonl."""

from __future__ import annotations

from typing import Any

from shaping.errors import ShapingError
from shaping.evaluation.claims import claims_prompt, load_claims, score_claims
from shaping.evaluation.registry import EvalContext, metric
from shaping.evaluation.samples import greedy_replies
from shaping.io import write_jsonl


@metric("claims")
def claims(ctx: EvalContext) -> dict[str, Any]:
    cfg = ctx.cfg.eval.claims
    samples = load_claims(cfg.claims_file, cfg.corpus_file, cfg.max_samples)
    if not samples:
        raise ShapingError(f"eval.claims.claims_file: {cfg.claims_file} has no claims")
    prompts = [[{"role": "user", "content": claims_prompt(cfg.prompt, s)}] for s in samples]
    out: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for name in ("base", "tuned"):
        with ctx.model(name) as model:
            replies = greedy_replies(model, ctx.tokenizer, prompts, cfg.max_new_tokens, ctx.cfg.eval.batch_size)
        figures, predictions = score_claims(
            samples, [r["text"] or "" for r in replies], ctx.cfg.eval.embedding_model, cfg.similarity_threshold
        )
        out[name] = figures
        records += [{"model": name, "prompt": p[0]["content"], **r} for p, r in zip(prompts, predictions, strict=True)]
    write_jsonl(ctx.details_dir / "claims.jsonl", records)
    return {"claims": out}
