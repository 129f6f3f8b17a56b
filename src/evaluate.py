"""Stage evaluate: base vs tuned (both without the system prompt) vs teacher (base with it).

    python src/evaluate.py                     # by hand, under outputs/
    python src/evaluate.py eval.samples.num_prompts=16
    dvc repro evaluate

Writes eval/metrics.json ({"base": {"loss", "perplexity"}, "tuned": {...}, "teacher": {...}})
and eval/samples.jsonl (greedy replies of base and tuned to the first held-out prompts).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shaping.errors import ShapingError
from shaping.evaluation import assistant_loss, greedy_replies, prompts_of, sample_stats
from shaping.inference import ModelRegistry
from shaping.io import read_jsonl, write_json, write_jsonl
from shaping.stage import StageContext, run_stage
from shaping.training import load_base_model, load_tokenizer

log = logging.getLogger("shaping.evaluate")
KNOWN_METRICS = ("loss", "samples")


def main(ctx: StageContext) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = ctx.cfg
    unknown = [m for m in cfg.eval.metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ShapingError(f"eval.metrics: unknown {unknown}; available: {', '.join(KNOWN_METRICS)}")
    eval_file = f"{cfg.paths.validated_dir}/eval.jsonl"
    adapter_dir = Path(cfg.paths.adapter_dir)
    rows = read_jsonl(eval_file)
    if not rows:
        raise ShapingError(f"{eval_file}: empty; raise dataset.eval_fraction")
    if not adapter_dir.is_dir():
        raise ShapingError(f"{adapter_dir}: no trained model; run `dvc repro train` first")
    ctx.record.add_inputs([eval_file])
    ctx.record.backend = cfg.backend.name
    system = ModelRegistry(cfg.models).system_prompt("teacher") if "teacher" in cfg.models else None

    tokenizer = load_tokenizer(cfg.model)
    conversations = [[m for m in r["messages"] if m["role"] != "system"] for r in rows]
    with_system = [[{"role": "system", "content": system}, *c] for c in conversations] if system else []
    prompts = prompts_of(rows, cfg.eval.samples.num_prompts)
    batch, new = cfg.eval.batch_size, cfg.eval.samples.max_new_tokens
    metrics: dict[str, Any] = {}
    replies: dict[str, list[dict[str, Any]]] = {}

    model = load_base_model(cfg.model)
    max_len = int(getattr(model.config, "max_position_embeddings", 4096))  # score whole conversations
    if "loss" in cfg.eval.metrics:
        metrics["base"] = assistant_loss(model, tokenizer, conversations, batch, max_len)
        if with_system:
            # the teacher scores its own held-out replies with the identity in its prompt
            metrics["teacher"] = assistant_loss(model, tokenizer, with_system, batch, max_len)
    if "samples" in cfg.eval.metrics:
        replies["base"] = greedy_replies(model, tokenizer, prompts, new, batch)

    if cfg.lora.enabled:
        tuned = PeftModel.from_pretrained(model, str(adapter_dir))
    else:
        tuned = AutoModelForCausalLM.from_pretrained(str(adapter_dir))
    if "loss" in cfg.eval.metrics:
        metrics["tuned"] = assistant_loss(tuned, tokenizer, conversations, batch, max_len)
    if "samples" in cfg.eval.metrics:
        replies["tuned"] = greedy_replies(tuned, tokenizer, prompts, new, batch)
        metrics["samples"] = {name: sample_stats(r) for name, r in replies.items()}
        write_jsonl(
            ctx.out(f"{cfg.paths.eval_dir}/samples.jsonl"),
            (
                {
                    "id": row["id"],
                    "prompt": prompt[-1]["content"],
                    "reference": row["messages"][-1]["content"],
                    **{name: r[i]["text"] for name, r in replies.items()},
                    **{f"{name}_finish": r[i]["finish_reason"] for name, r in replies.items()},
                }
                for i, (row, prompt) in enumerate(zip(rows, prompts, strict=False))
            ),
        )
    write_json(ctx.out(f"{cfg.paths.eval_dir}/metrics.json"), metrics)
    ctx.record.details = metrics
    for name in ("base", "teacher", "tuned"):
        if name in metrics:
            log.info("%-7s loss %.4f  perplexity %.2f", name, metrics[name]["loss"], metrics[name]["perplexity"])


if __name__ == "__main__":
    run_stage(
        "evaluate",
        sections=["seed", "model", "lora", "models", "eval"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.eval_dir}/run.json",
    )
