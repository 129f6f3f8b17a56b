"""train=distill: on-policy context distillation with the real TRL GKDTrainer on the tiny test model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.hub import load_base_model, load_tokenizer
from shaping.training import distill, hf_peft

from .conftest import DIALOGUES, composed

ROWS = [{"id": str(n), "messages": d} for n, d in enumerate(DIALOGUES)]


def distill_cfg(cfg: Config) -> Config:
    cfg.train = composed("train=distill", "+experiment=smoke").train  # conf/train/distill.yaml as the stage gets it
    cfg.train.precision, cfg.train.logging_steps = "fp32", 1
    return cfg


def test_distill_loss_is_the_reverse_kl_to_the_base_reading_the_identity_prompt(cfg: Config, tmp_path: Path) -> None:
    cfg = distill_cfg(cfg)
    assert (cfg.train.method, cfg.train.beta, cfg.train.lmbda) == ("distill", 1.0, 1.0)
    default = composed("train=distill")  # the reply length follows the teacher's by default (smoke sets 16)
    assert default.train.max_completion_length == default.models["teacher"].max_new_tokens
    system, source = distill.teacher_system_prompt(cfg)
    assert source == "data/identity/identity.md" and system == Path(source).read_text(encoding="utf-8").strip()
    tokenizer = load_tokenizer(cfg.model)
    base = load_base_model(cfg.model)
    base_params = sum(p.numel() for p in base.parameters())
    args = hf_peft.common_args(cfg, {"output_dir": str(tmp_path), "save_strategy": "no"}, "fp32", False, "cpu")
    trainer = hf_peft.distill_trainer(cfg, base, tokenizer, ROWS, args, [])
    # the teacher is the base with the adapter disabled: no second copy of the weights
    assert trainer.own_teacher is None and isinstance(trainer.model, PeftModel)
    adapter = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in trainer.model.parameters()) == base_params + adapter
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: move the student off the base, so that the KL has two sides
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    rows = [trainer.train_dataset[i] for i in range(len(ROWS))]
    assert all(m["role"] != "system" for r in rows for m in r["messages"])  # the student never sees a system prompt
    batch = trainer.data_collator(rows)  # lmbda aside: the off-policy batch, the teacher's replies in the data
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))

    # the reference, one conversation at a time, unpadded: the student reads it without a system message, the
    # teacher (the base: adapter disabled) with the identity prompt; KL(student || teacher) per reply token
    def logits(messages: list[dict[str, str]], n_reply: int) -> torch.Tensor:
        ids = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = torch.tensor([tokenizer(ids, add_special_tokens=False)["input_ids"]])
        return trainer.model(input_ids=ids).logits[0, -n_reply - 1 : -1]

    kls = []
    with torch.no_grad():
        for dialogue in DIALOGUES:
            student_turns = [m for m in dialogue if m["role"] != "system"]
            prompt = tokenizer.apply_chat_template(student_turns[:-1], add_generation_prompt=True, tokenize=False)
            whole = tokenizer.apply_chat_template(student_turns, tokenize=False)
            n_reply = len(tokenizer(whole, add_special_tokens=False)["input_ids"]) - len(
                tokenizer(prompt, add_special_tokens=False)["input_ids"]
            )
            s = F.log_softmax(logits(student_turns, n_reply), -1)
            with trainer.model.disable_adapter():
                t = F.log_softmax(logits([{"role": "system", "content": system}, *student_turns], n_reply), -1)
            kls.append((s.exp() * (s - t)).sum(-1))
    expected = float(torch.cat(kls).mean())
    assert expected > 0.01  # the two sides differ (0.044 with data/identity/identity.md as of 2026-12-07)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert trainer._metrics["eval"]["reverse_kl"] == [pytest.approx(expected, rel=1e-4)]


def test_distill_reverse_kl_to_the_teacher_falls_over_training(
    cfg: Config, random_adapter_dir: Path, tmp_path: Path
) -> None:
    """The teacher: the tiny base with a random adapter merged, and the identity prompt (another local model with
    the same tokenizer), far from the student at the start, so the fall is large by construction."""
    cfg = distill_cfg(cfg)
    cfg.models["teacher"].adapter = str(random_adapter_dir)
    t = cfg.train
    t.max_steps, t.batch_size, t.learning_rate, t.max_completion_length = 6, 3, 1e-2, 8
    tokenizer = load_tokenizer(cfg.model)
    system, _ = distill.teacher_system_prompt(cfg)
    teacher = distill.load_teacher(cfg, torch.float32)
    assert teacher is not None
    base = load_base_model(cfg.model)
    before = distill.measure_reverse_kl(base, teacher, tokenizer, DIALOGUES, system)

    report = hf_peft.train(cfg, ROWS * 4, tmp_path / "adapter", tmp_path / "live")
    assert report.metrics["method"] == "distill" and report.metrics["steps"] == 6
    student = PeftModel.from_pretrained(load_base_model(cfg.model), str(tmp_path / "adapter"))
    after = distill.measure_reverse_kl(student, teacher, tokenizer, DIALOGUES, system)
    assert before > 0.05 and after < 0.3 * before, (before, after)

    # one DVCLive row per step (logging_steps=1) of the reverse KL on the student's own samples; falls too
    lines = (tmp_path / "live" / "plots" / "metrics" / "reverse_kl.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["step", "reverse_kl"]
    logged = [float(line.split("\t")[1]) for line in lines[1:]]
    assert len(logged) == 6
    assert sum(logged[-3:]) / 3 < 0.5 * logged[0], logged
    assert report.metrics["reverse_kl"] == pytest.approx(logged[-1], abs=1e-6)
    assert report.metrics["reverse_kl_first"] == pytest.approx(logged[0], abs=1e-6)


def test_distill_bad_knobs_fail_naming_the_key(cfg: Config) -> None:
    cfg = distill_cfg(cfg)
    cfg.train.teacher_system_prompt = "data/identity/missing.md"
    with pytest.raises(ShapingError, match=r"train\.teacher_system_prompt: data/identity/missing\.md not found"):
        distill.teacher_system_prompt(cfg)
    cfg.train.teacher_system_prompt = "none"
    with pytest.raises(ShapingError, match=r"is the student's own base and has no system prompt, so there is nothing"):
        distill.teacher_system_prompt(cfg)
    cfg.train.teacher = "nobody"
    with pytest.raises(ShapingError, match=r"train\.teacher='nobody': not in the model registry"):
        distill.teacher_spec(cfg)
    cfg.train.teacher, cfg.models["teacher"].backend = "teacher", "openai"
    with pytest.raises(ShapingError, match=r"models\.teacher\.backend=openai; train=distill needs"):
        distill.teacher_spec(cfg)
    cfg.train.packing = True
    with pytest.raises(ShapingError, match=r"train=distill pads its batches"):
        hf_peft.check_options(cfg)


def test_rows_with_tool_calls_are_refused_naming_the_row(cfg: Config) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "stock", "arguments": "{}"}}
    tooled = [
        {"role": "user", "content": "In stock?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "yes", "tool_call_id": "c1"},
        {"role": "assistant", "content": "Yes."},
    ]
    rows = [{"messages": DIALOGUES[1]}, {"messages": tooled}]
    with pytest.raises(ShapingError, match=r"train\.jsonl:2: a conversation with tool calls; train=distill"):
        distill.distill_rows(rows, load_tokenizer(cfg.model), "You are Juniper.")
