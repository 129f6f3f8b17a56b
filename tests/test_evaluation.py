from __future__ import annotations

import math
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config import Config
from shaping.config.schema import GuardConfig
from shaping.errors import ShapingError
from shaping.evaluation import (
    EvalContext,
    assistant_loss,
    check_guards,
    encode_for_loss,
    greedy_replies,
    run_metrics,
    sample_stats,
)

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


def test_guards_name_metric_bound_and_value() -> None:
    metrics = {"tuned": {"loss": 2.0}, "samples": {"tuned": {"eos_rate": 0.5}}}
    results = check_guards(
        metrics,
        [
            GuardConfig(metric="tuned.loss", max=1.5),
            GuardConfig(metric="samples.tuned.eos_rate", min=0.4),
            GuardConfig(metric="tuned.nope", min=0),
        ],
    )
    assert [r["passed"] for r in results] == [False, True, False]
    assert results[0]["message"] == "tuned.loss = 2 is above the guard's max 1.5"
    assert results[2]["message"] == "tuned.nope: no such numeric metric"


def test_registry_runs_metrics_with_adapters_disabled_for_base(cfg: Config, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    tuned = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    rows = [{"id": str(i), "messages": d} for i, d in enumerate(DIALOGUES)]
    ctx = EvalContext(
        cfg=cfg,
        tokenizer=tokenizer,
        rows=rows,
        tuned=tuned,
        base=None,
        system_prompt="You are Juniper.",
        out_dir=tmp_path,
    )
    metrics = run_metrics(ctx, ["loss", "samples", "think_tags"])
    assert set(metrics) == {"base", "tuned", "teacher", "gap_closed", "samples", "think_tags"}
    gap = metrics["base"]["loss"] - metrics["teacher"]["loss"]
    expected_gap = round((metrics["base"]["loss"] - metrics["tuned"]["loss"]) / gap, 4) if gap > 0 else None
    assert metrics["gap_closed"] == expected_gap
    assert metrics["base"]["loss"] != metrics["tuned"]["loss"]  # random LoRA weights change the model
    reference = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    expected = assistant_loss(
        reference, tokenizer, [[m for m in d if m["role"] != "system"] for d in DIALOGUES], 16, 256
    )
    assert metrics["base"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)  # adapters really disabled
    assert metrics["think_tags"]["tuned"]["valid_share"] == 1.0  # no tags at all is valid
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2  # smoke: two prompts
    assert set(metrics["samples"]["tuned"]) >= {"eos_rate", "distinct_2", "repetition_rate", "mean_tokens"}
    with pytest.raises(ShapingError, match=r"eval\.metrics: unknown"):
        run_metrics(ctx, ["nope"])
