"""Deterministic generation samples: greedy replies to fixed held-out prompts."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from shaping.inference.hf import generate_chat


def prompts_of(rows: list[dict[str, Any]], n: int) -> list[list[dict[str, str]]]:
    """The first `n` rows' conversations up to (not including) their last assistant reply."""
    return [row["messages"][:-1] for row in rows[:n]]


def greedy_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        replies = generate_chat(
            model,
            tokenizer,
            prompts[start : start + batch_size],
            temperature=0.0,
            max_new_tokens=max_new_tokens,
        )
        out.extend({"text": r.text, "finish_reason": r.finish_reason, "tokens": r.completion_tokens} for r in replies)
    return out


def sample_stats(replies: list[dict[str, Any]]) -> dict[str, float]:
    if not replies:
        return {"eos_rate": 0.0, "mean_tokens": 0.0}
    return {
        "eos_rate": round(sum(r["finish_reason"] == "stop" for r in replies) / len(replies), 4),
        "mean_tokens": round(sum(r["tokens"] for r in replies) / len(replies), 2),
    }
