from __future__ import annotations

import math

from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.evaluation import assistant_loss, encode_for_loss, greedy_replies, sample_stats

from .conftest import DIALOGUES


def test_loss_counts_assistant_tokens_only(tiny_model_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    (_, labels), *_ = encode_for_loss(tokenizer, DIALOGUES, 256)
    scored = [t for t in labels if t != -100]
    assert tokenizer.decode(scored) == DIALOGUES[0][-1]["content"] + "<|im_end|>"
    result = assistant_loss(model, tokenizer, DIALOGUES, batch_size=2)
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-4)
    # batching must not change the figure (padding is masked)
    assert math.isclose(assistant_loss(model, tokenizer, DIALOGUES, batch_size=1)["loss"], result["loss"], rel_tol=1e-5)


def test_greedy_samples_are_deterministic(tiny_model_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [d[:-1] for d in DIALOGUES]
    first = greedy_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    assert first == greedy_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    stats = sample_stats(first)
    assert 0 <= stats["eos_rate"] <= 1 and 0 < stats["mean_tokens"] <= 6
