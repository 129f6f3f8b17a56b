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
    """eos_rate: share that stopped on EOS; distinct_n: distinct n-grams / n-grams over all
    replies (words); repetition_rate: mean share of each reply's word trigrams that repeat."""
    if not replies:
        return {"eos_rate": 0.0, "mean_tokens": 0.0, "distinct_1": 0.0, "distinct_2": 0.0, "repetition_rate": 0.0}
    words = [(r["text"] or "").split() for r in replies]
    grams = {n: [tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)] for n in (1, 2)}
    repeats = []
    for w in words:
        trigrams = [tuple(w[i : i + 3]) for i in range(len(w) - 2)]
        if trigrams:
            repeats.append(1 - len(set(trigrams)) / len(trigrams))
    return {
        "eos_rate": round(sum(r["finish_reason"] == "stop" for r in replies) / len(replies), 4),
        "mean_tokens": round(sum(r["tokens"] for r in replies) / len(replies), 2),
        "distinct_1": round(len(set(grams[1])) / len(grams[1]), 4) if grams[1] else 0.0,
        "distinct_2": round(len(set(grams[2])) / len(grams[2]), 4) if grams[2] else 0.0,
        "repetition_rate": round(sum(repeats) / len(repeats), 4) if repeats else 0.0,
    }
