"""SFT data (stop token, templates, train_on_prompt, loss weights), padding-free/packing, DPO and KTO
on the tiny test model with the real TRL trainers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from shaping.config import Config
from shaping.config.schema import LossWeight
from shaping.data.transforms import to_preferences, to_sft, to_unpaired
from shaping.errors import ShapingError
from shaping.hub import load_base_model, load_tokenizer
from shaping.training import hf_peft
from shaping.training.sft import IGNORE, check_stop_token_learned, tokenize_conversation, training_template

from .conftest import DIALOGUES, composed

# ChatML without {% generation %} markers: a template TRL has no training version of
PLAIN_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
# markers around the reply only: the end-of-turn token falls outside, so it never carries loss
MARKED_WITHOUT_STOP = PLAIN_CHATML.replace(
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}",
    "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' }}{%- generation -%}"
    "{{ message['content'] }}{%- endgeneration -%}{{ '<|im_end|>\n' }}{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{%- endif -%}",
)


SPAN = r"seed library by the river"  # in DIALOGUES[0]'s reply


def trainer_args(cfg: Config, tmp_path: Path) -> dict[str, Any]:
    return hf_peft.common_args(
        cfg, {"output_dir": str(tmp_path / "trainer"), "save_strategy": "no"}, "fp32", False, "cpu"
    )


def last_trained_token(tokenizer: PreTrainedTokenizerBase, labels: list[int]) -> int:
    return [t for t in labels if t != IGNORE and tokenizer.decode([t]).strip()][-1]


def test_trl_rows_end_on_the_stop_token_with_loss_and_match_our_tokenization(cfg: Config, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model)
    rows = [{"messages": d} for d in DIALOGUES]
    trainer = hf_peft.sft_trainer(cfg, model, tokenizer, rows, trainer_args(cfg, tmp_path), [])
    assert trainer.train_dataset is not None
    for n, row in enumerate(trainer.train_dataset):
        assert (
            last_trained_token(tokenizer, row["labels"])
            == tokenizer.eos_token_id
            == tokenizer.convert_tokens_to_ids("<|im_end|>")
        )
        ours = tokenize_conversation(tokenizer, DIALOGUES[n], None, False, cfg.train.max_length)
        assert ours == {"input_ids": row["input_ids"], "labels": row["labels"]}  # the pre-tokenized paths agree
        trained = tokenizer.decode([t for t in row["labels"] if t != IGNORE])
        assert trained == DIALOGUES[n][-1]["content"] + "<|im_end|>"  # the reply and its stop, nothing else


def test_train_on_prompt_puts_loss_on_every_token(cfg: Config) -> None:
    tokenizer = load_tokenizer(cfg.model)
    row = tokenize_conversation(tokenizer, DIALOGUES[0], None, True, None)
    assert row["labels"] == row["input_ids"] and len(row["input_ids"]) > 20
    assert last_trained_token(tokenizer, row["labels"]) == tokenizer.eos_token_id


def test_a_template_without_generation_markers_fails_saying_how_to_fix_it(cfg: Config) -> None:
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.chat_template = PLAIN_CHATML
    with pytest.raises(ShapingError, match=r"no \{% generation %\} markers.*train\.train_on_prompt=true"):
        training_template(tokenizer, train_on_prompt=False, name="tiny")
    assert training_template(tokenizer, train_on_prompt=True, name="tiny") is None  # no markers needed


def test_trl_derives_the_training_template_of_a_known_model(cfg: Config) -> None:
    from trl.chat_template_utils import has_generation_markers, qwen2_5_chat_template

    tokenizer = load_tokenizer(cfg.model)
    tokenizer.chat_template = qwen2_5_chat_template  # Qwen2.5's own: no markers; TRL has a marked version
    template = training_template(tokenizer, train_on_prompt=False, name="qwen-like")
    assert template is not None and has_generation_markers(template)
    check_stop_token_learned(tokenizer, [DIALOGUES[1]], template, False, None)  # <|im_end|> carries loss


def test_markers_that_leave_out_the_stop_token_fail(cfg: Config) -> None:
    tokenizer = load_tokenizer(cfg.model)
    with pytest.raises(ShapingError, match=r"never learn to stop"):
        check_stop_token_learned(tokenizer, [DIALOGUES[1]], MARKED_WITHOUT_STOP, False, None)


def test_loss_weights_mark_the_matched_reply_tokens_only(cfg: Config) -> None:
    tokenizer = load_tokenizer(cfg.model)
    row = tokenize_conversation(tokenizer, DIALOGUES[0], None, False, None, [(re.compile(r"Juniper"), 3.0)])
    heavy = tokenizer.decode([t for t, w in zip(row["input_ids"], row["loss_weights"], strict=True) if w == 3.0])
    assert heavy.strip() == "Juniper"  # in the reply; the system prompt's "Juniper" carries no loss at all
    assert all(w == 0.0 for w, label in zip(row["loss_weights"], row["labels"], strict=True) if label == IGNORE)
    assert {w for w, label in zip(row["loss_weights"], row["labels"], strict=True) if label != IGNORE} == {1.0, 3.0}


def weighted_loss(cfg: Config, tmp_path: Path, weight: float, mask_span: bool = False) -> tuple[float, int, int]:
    """(loss, tokens with loss, tokens in the span) of one fixed batch at the initial weights."""
    cfg.train.loss_weights = [LossWeight(SPAN, weight)]
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model = load_base_model(cfg.model)
    rows = [{"messages": d} for d in DIALOGUES]
    trainer = hf_peft.sft_trainer(cfg, model, tokenizer, rows, trainer_args(cfg, tmp_path), [])
    assert isinstance(trainer, hf_peft.GuardedWeightedSFTTrainer)
    examples = [dict(trainer.train_dataset[i]) for i in range(len(rows))]
    span = sum(1 for w in examples[0]["loss_weights"] if w == weight) if weight != 1.0 else 0
    if mask_span:  # the reference: the same tokens masked the ordinary way, every other weight 1
        spec = tokenize_conversation(tokenizer, DIALOGUES[0], None, False, None, [(re.compile(SPAN), 0.0)])
        examples[0]["labels"], examples[0]["loss_weights"] = (
            spec["labels"],
            [0.0 if label == IGNORE else 1.0 for label in spec["labels"]],
        )
    batch = trainer.data_collator(examples)
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    return float(loss), int((batch["labels"][:, 1:] != IGNORE).sum()), span


def test_a_zero_weight_equals_masking_and_two_doubles_the_span(cfg: Config, tmp_path: Path) -> None:
    cfg.lora.dropout = 0.0  # the same forward every call
    zero, n_zero, _ = weighted_loss(cfg, tmp_path, 0.0)
    masked, n_masked, _ = weighted_loss(cfg, tmp_path, 1.0, mask_span=True)
    torch.testing.assert_close(zero, masked, rtol=1e-6, atol=1e-6)
    assert n_zero == n_masked
    one, n_one, _ = weighted_loss(cfg, tmp_path, 1.0)
    two, n_two, span = weighted_loss(cfg, tmp_path, 2.0)
    assert n_one == n_two == n_zero + span and span >= 4
    # sum of the span's token losses, from the two runs without the doubling
    span_sum = one * n_one - zero * n_zero
    torch.testing.assert_close(two * n_two, one * n_one + span_sum, rtol=1e-5, atol=1e-5)
    assert span_sum > 0


def test_unit_weights_give_trl_s_own_loss(cfg: Config, tmp_path: Path) -> None:
    cfg.lora.dropout = 0.0
    ours, _, _ = weighted_loss(cfg, tmp_path, 1.0)
    cfg.train.loss_weights = []
    tokenizer = load_tokenizer(cfg.model)
    trainer = hf_peft.sft_trainer(
        cfg,
        load_base_model(cfg.model),
        tokenizer,
        [{"messages": d} for d in DIALOGUES],
        trainer_args(cfg, tmp_path),
        [],
    )
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(len(DIALOGUES))])
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, dict(batch)))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def step_losses(cfg: Config, tmp_path: Path, **train: Any) -> list[float]:
    for key, value in train.items():
        setattr(cfg.train, key, value)
    cfg.lora.dropout, cfg.train.logging_steps, cfg.train.max_steps, cfg.train.batch_size = 0.0, 1, 4, 3
    cfg.train.learning_rate = 1e-2
    rows = [{"messages": d} for d in DIALOGUES] * 4
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    trainer = hf_peft.sft_trainer(cfg, load_base_model(cfg.model), tokenizer, rows, trainer_args(cfg, tmp_path), [])
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_padding_free_trains_exactly_like_padded_batches(cfg: Config, tmp_path: Path) -> None:
    """Same rows, same batches, one flattened row with per-sequence positions instead of padding:
    SDPA keeps attention within each sequence (transformers derives the mask from position_ids), so
    the loss of every step matches the padded run's to float rounding."""
    padded = step_losses(cfg, tmp_path / "padded", padding_free=False)
    flat = step_losses(cfg, tmp_path / "flat", padding_free=True)
    assert len(padded) == len(flat) == 4
    torch.testing.assert_close(flat, padded, rtol=2e-4, atol=2e-4)


def test_packing_keeps_the_loss_per_token(cfg: Config, tmp_path: Path) -> None:
    """Packed rows change which sequences share a step, so compare the whole dataset at the initial
    weights: the mean loss per trained token over all packed blocks equals the unpacked one."""
    tokenizer = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model)
    rows = [{"messages": d} for d in DIALOGUES] * 2
    totals = []
    for packing in (False, True):
        cfg.train.packing = packing
        cfg.train.max_length = 128 if packing else 256  # 128-token blocks: one long or two short rows
        trainer = hf_peft.sft_trainer(cfg, model, tokenizer, rows, trainer_args(cfg, tmp_path), [])
        examples = [dict(row) for row in trainer.train_dataset]
        if packing:
            assert len(examples) < len(rows) and any(len(e["seq_lengths"]) > 1 for e in examples)
        loss_sum, count = 0.0, 0
        for example in examples:
            batch = trainer.data_collator([example])
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            with torch.no_grad():
                loss_sum += float(trainer.compute_loss(trainer.model, dict(batch))) * n
            count += n
        totals.append((loss_sum / count, count))
    (unpacked, n_unpacked), (packed, n_packed) = totals
    assert n_unpacked == n_packed
    torch.testing.assert_close(packed, unpacked, rtol=1e-5, atol=1e-5)


def test_to_preferences_builds_pairs_and_skips_what_teaches_nothing() -> None:
    chat = {"id": "a", "messages": DIALOGUES[1], "rejected": "Stones."}
    same = {"id": "b", "messages": DIALOGUES[2], "rejected": DIALOGUES[2][-1]["content"]}
    plain = {"id": "c", "messages": DIALOGUES[0]}
    pref = {"id": "d", "prompt": "Hi?", "chosen": "Hello.", "rejected": [{"role": "assistant", "content": "Go."}]}
    pairs = to_preferences([chat, same, plain, pref], "train.jsonl")
    assert pairs == [
        {
            "prompt": DIALOGUES[1][:-1],
            "chosen": DIALOGUES[1][-1:],
            "rejected": [{"role": "assistant", "content": "Stones."}],
        },
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go."}],
        },
    ]
    with pytest.raises(ShapingError, match=r"train\.jsonl: no preference pair to train on \(1 rows without"):
        to_preferences([plain], "train.jsonl")
    with pytest.raises(ShapingError, match=r"train\.jsonl:1: rejected: expected a non-empty string"):
        to_preferences([{**chat, "rejected": ""}], "train.jsonl")
    assert to_sft([pref]) == [{"messages": pairs[1]["prompt"] + pairs[1]["chosen"]}]


def test_dpo_with_lora_scores_the_reference_with_the_adapter_disabled(cfg: Config, tmp_path: Path) -> None:
    cfg.train.method, cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate = "dpo", 4, 2, 5e-3
    rows = [{"id": str(n), "messages": d, "rejected": "I do not know."} for n, d in enumerate(DIALOGUES)] * 2
    tokenizer = load_tokenizer(cfg.model)
    base = load_base_model(cfg.model)
    base_params = sum(p.numel() for p in base.parameters())
    args = {**trainer_args(cfg, tmp_path), "logging_steps": 1}
    trainer = hf_peft.dpo_trainer(cfg, base, tokenizer, rows, args, [])
    # no reference copy: TRL scores the reference through the same weights with the adapter off
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert list(trainer.model.peft_config) == ["default"]
    adapter = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in trainer.model.parameters()) == base_params + adapter
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rewards/margins" in e]
    # step 1: LoRA B starts at zero, so policy == reference and every reward is 0
    assert logs[0]["rewards/chosen"] == 0.0 and logs[0]["rewards/rejected"] == 0.0
    assert logs[-1]["rewards/margins"] > 0  # the policy moved towards the chosen replies


def test_dpo_backend_run_reports_rewards_and_saves_the_adapter(cfg: Config, tmp_path: Path) -> None:
    cfg.train.method, cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate = "dpo", 3, 2, 5e-3
    cfg.train.precompute_ref_log_probs = True
    rows = [{"id": str(n), "messages": d, "rejected": "I do not know."} for n, d in enumerate(DIALOGUES)] * 2
    report = hf_peft.train(cfg, rows, tmp_path / "adapter", tmp_path / "live")
    assert report.metrics["method"] == "dpo" and report.metrics["steps"] == 3
    assert 0.0 <= report.metrics["reward_accuracy"] <= 1.0 and "reward_margin" in report.metrics
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_to_unpaired_gives_each_pair_a_desirable_and_an_undesirable_row() -> None:
    rows = [{"id": str(n), "messages": d, "rejected": f"No idea {n}."} for n, d in enumerate(DIALOGUES)]
    rows.append({"id": "plain", "messages": DIALOGUES[0]})  # no rejected reply: left out, as for dpo
    unpaired = to_unpaired(rows, "train.jsonl", seed=3)
    assert len(unpaired) == 6 and sorted(r["label"] for r in unpaired) == [False] * 3 + [True] * 3
    for n, dialogue in enumerate(DIALOGUES):
        mine = [r for r in unpaired if r["prompt"] == dialogue[:-1]]
        assert {r["label"]: r["completion"] for r in mine} == {
            True: dialogue[-1:],
            False: [{"role": "assistant", "content": f"No idea {n}."}],
        }
    assert to_unpaired(rows, "train.jsonl", seed=3) == unpaired  # seeded
    assert [r["label"] for r in unpaired] != [True, False] * 3  # shuffled: a pair's rows are not side by side
    with pytest.raises(ShapingError, match=r"train\.jsonl: no preference pair.*train\.method=kto needs chat rows"):
        to_unpaired([{"id": "plain", "messages": DIALOGUES[0]}], "train.jsonl")
    with pytest.raises(ShapingError, match=r"train\.jsonl:2: rejected: expected a non-empty string"):
        to_unpaired([rows[0], {**rows[1], "rejected": " "}], "train.jsonl")


def test_kto_backend_run_logs_rewards_to_dvclive_and_saves_the_adapter(cfg: Config, tmp_path: Path) -> None:
    cfg.train = composed("train=kto", "+experiment=smoke").train  # conf/train/kto.yaml as the stage gets it
    assert (cfg.train.method, cfg.train.loss_type) == ("kto", "kto")
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.logging_steps, cfg.train.learning_rate = 3, 4, 1, 5e-3
    rows = [{"id": str(n), "messages": d, "rejected": "I do not know."} for n, d in enumerate(DIALOGUES)] * 2
    report = hf_peft.train(cfg, rows, tmp_path / "adapter", tmp_path / "live")
    assert report.metrics["method"] == "kto" and report.metrics["steps"] == 3
    assert {"reward_margin", "reward_chosen", "reward_rejected", "kl"} <= set(report.metrics)
    assert "reward_accuracy" not in report.metrics  # unpaired: TRL logs no accuracy
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    plots = tmp_path / "live" / "plots" / "metrics"
    logged = {}
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "loss"):
        lines = (plots / f"{name}.tsv").read_text().splitlines()
        assert lines[0].split("\t") == ["step", name.rsplit("/", 1)[-1]]
        logged[name] = [float(line.split("\t")[1]) for line in lines[1:]]
        assert len(logged[name]) == 3, name  # one row per step (logging_steps=1)
    # step 1: LoRA B starts at zero, so the policy is the reference (the adapter disabled) and rewards are 0
    assert logged["rewards/chosen"][0] == 0.0 and logged["rewards/rejected"][0] == 0.0
    assert logged["rewards/margins"][-1] > 0  # the policy moved towards the desirable replies
    assert report.metrics["reward_margin"] == pytest.approx(logged["rewards/margins"][-1], abs=1e-6)
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["reward_margin"] == report.metrics["reward_margin"]


def test_kto_on_rows_without_a_rejected_reply_is_one_error_naming_the_file(cfg: Config, tmp_path: Path) -> None:
    cfg.train = composed("train=kto", "+experiment=smoke").train
    rows = [{"id": str(n), "messages": d} for n, d in enumerate(DIALOGUES)]
    with pytest.raises(ShapingError, match=r"train\.jsonl: no preference pair to train on \(3 rows without") as err:
        hf_peft.train(cfg, rows, tmp_path / "adapter", tmp_path / "live")
    assert "train.method=kto needs chat rows with `rejected`" in str(err.value)
    assert not (tmp_path / "adapter").exists()


def test_identity_pipeline_records_the_base_reply_as_rejected(cfg: Config, tmp_path: Path) -> None:
    from shaping.pipeline.loader import load_pipeline_class

    from .conftest import REPO

    cls = load_pipeline_class("identity_distillation", REPO / "pipelines")
    for spec in ("teacher", "base"):
        cfg.models[spec].max_new_tokens, cfg.models[spec].min_new_tokens = 8, 2
    pipeline = cls(cfg, output_dir=tmp_path, limit=3)
    pipeline.execute()
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert all(isinstance(r["rejected"], str) and r["rejected"] for r in rows)
    assert all(r["messages"][0]["role"] == "user" for r in rows)  # the identity is not in the row
    assert to_preferences(rows)  # the synthesized rows are DPO pairs as they are


def test_tool_calls_train_only_through_a_template_that_renders_them(cfg: Config, tmp_path: Path) -> None:
    from trl.chat_template_utils import qwen2_5_chat_template

    from shaping.training.sft import check_tools_rendered

    call = {"id": "c1", "type": "function", "function": {"name": "stock", "arguments": '{"sku": "A7"}'}}
    messages = [
        {"role": "user", "content": "Is A7 in stock?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "twelve left", "tool_call_id": "c1"},
        {"role": "assistant", "content": "Yes, twelve."},
    ]
    tools = [{"type": "function", "function": {"name": "stock", "parameters": {"type": "object"}}}]
    rows = to_sft([*({"messages": d} for d in DIALOGUES), {"id": "t", "messages": messages, "tools": tools}])
    assert rows[-1] == {"messages": messages, "tools": tools}  # kept whole for the template
    tokenizer = load_tokenizer(cfg.model)  # the demo's ChatML renders content only
    with pytest.raises(ShapingError, match=r"train\.jsonl:4: model tiny: its chat template fails on it"):
        check_tools_rendered(tokenizer, rows, None, "tiny", "train.jsonl")  # null content beside the call
    blank = [{**rows[-1], "messages": [{**m, "content": m["content"] or ""} for m in messages]}]
    with pytest.raises(
        ShapingError, match=r"train\.jsonl:1: .* leaves out its tool calls and leaves out its tools, .*Qwen2\.5's"
    ):
        check_tools_rendered(tokenizer, blank, None, "tiny", "train.jsonl")
    tokenizer.chat_template = qwen2_5_chat_template
    template = training_template(tokenizer, train_on_prompt=False, name="qwen-like")
    check_tools_rendered(tokenizer, rows, template, "qwen-like", "train.jsonl")
    ours = tokenize_conversation(tokenizer, messages, template, False, None, tools=tools)
    trained = tokenizer.decode([t for t in ours["labels"] if t != IGNORE])
    assert '"name": "stock"' in trained and "Yes, twelve." in trained and "twelve left" not in trained
    prompt = tokenizer.decode(
        [t for t, label in zip(ours["input_ids"], ours["labels"], strict=True) if label == IGNORE]
    )
    assert '"name": "stock", "parameters"' in prompt and "twelve left" in prompt  # the tools offered, the result
    cfg.train.max_length = None
    trainer = hf_peft.sft_trainer(cfg, load_base_model(cfg.model), tokenizer, rows, trainer_args(cfg, tmp_path), [])
    assert trainer.train_dataset is not None
    assert trainer.train_dataset[-1]["input_ids"] == ours["input_ids"]  # TRL rendered the tools column too
