"""train=distill: on-policy context distillation with the real TRL GKDTrainer on the tiny test model."""

from __future__ import annotations

import dataclasses
import random
import string
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.evaluation.loss import IGNORE, assistant_loss, encode_for_loss
from shaping.hub import load_base_model, load_tokenizer
from shaping.inference.hf import generate_rows
from shaping.inference.sampling import SamplingOptions
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


TRAIN_PROMPTS = [
    "Who are you?",
    "What is bread made of?",
    "How do trains stop?",
    "Where does the river run?",
    "When do seeds wake?",
    "Why is the kitchen warm?",
    "What is under the bridge?",
    "How does bread rise?",
]
HELD_OUT_PROMPTS = [
    "What do you keep by the river?",
    "When does the spring rain come?",
    "Who bakes the bread?",
    "Where is the seed library?",
    "How slowly do trains brake?",
    "What waits in the dark soil?",
]
SEED = 0  # docs/training.md has this test's figures for seeds 0 to 5


def teacher_samples(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, system: str, prompts: list[str], each: int, seed: int
) -> list[list[dict[str, str]]]:
    """`each` replies per prompt, sampled at temperature 1 by the teacher reading `system` first, as the
    conversations the student reads (no system message)."""
    convs = [
        [{"role": "system", "content": system}, {"role": "user", "content": p}] for p in prompts for _ in range(each)
    ]
    options = [SamplingOptions(1.0, 1.0, 32, (), seed=seed * 10_000 + i) for i in range(len(convs))]
    replies = generate_rows(teacher, tokenizer, convs, options)
    return [[c[1], {"role": "assistant", "content": r.text}] for c, r in zip(convs, replies, strict=True)]


@pytest.mark.slow
def test_distill_lowers_held_out_loss_of_teacher_samples_more_than_sft_on_as_many_tokens(
    cfg: Config, tmp_path: Path
) -> None:
    """The teacher: the tiny base fully fine-tuned to reply, after the identity prompt, with 8 characters drawn
    uniformly from 62 letters and digits, so that every next-token distribution is wide (4.1 to 4.3 nats per
    token) and far from the base's. SFT trains on 8 of its replies at batch 1 (45 to 69 reply tokens on seeds
    0-2: fewer sampled tokens than the teacher has likely next tokens, each a one-hot target); distill, in the
    same 8 steps at batch 1, matches the teacher's whole distribution on every token of at most as many tokens
    of the student's own replies. The held-out loss of fresh teacher samples on other prompts (per reply token,
    the student reading without the system prompt) falls at least 1.5x as much with distill (1.75x to 2.0x on
    seeds 0-2; docs/training.md). The advantage is that of few tokens: at batch 4 (4x the tokens) it is 1.2x.
    Full fine-tunes: a LoRA on this 2-layer, 32-wide model leaves lm_head frozen and barely moves its logits (a
    LoRA teacher trained 80 steps at lr 0.1 had a mean training loss of 5.28; the full model 3.4 in 60 at 1e-2)."""
    cfg = distill_cfg(cfg)
    cfg.seed = SEED
    cfg.lora = composed("lora=none").lora
    tokenizer = load_tokenizer(cfg.model)
    system, _ = distill.teacher_system_prompt(cfg)
    assert system is not None

    def run(name: str, method: str, rows: list[dict[str, Any]], steps: int, batch: int) -> Path:
        cfg.train = composed(f"train={method}", "+experiment=smoke").train
        t = cfg.train
        t.precision, t.learning_rate, t.max_steps, t.batch_size = "fp32", 1e-2, steps, batch
        t.max_length = 1024  # the identity prompt is ~240 tokens with this vocabulary: the teacher's rows keep it
        t.max_completion_length = completion  # distill's sampled replies
        report = hf_peft.train(cfg, rows, tmp_path / name, tmp_path / f"live-{name}")
        assert report.metrics["steps"] == steps
        return tmp_path / name

    rng = random.Random(SEED)
    alphabet = string.ascii_letters + string.digits
    teach = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": p},
                {"role": "assistant", "content": "".join(rng.choice(alphabet) for _ in range(8))},
            ]
        }
        for p in TRAIN_PROMPTS + HELD_OUT_PROMPTS
        for _ in range(4)
    ]
    completion = 0
    cfg.models["teacher"].model = str(run("teacher", "sft", teach, 30, 8))
    teacher = distill.load_teacher(cfg, torch.float32)
    assert teacher is not None

    steps, batch = 8, 1
    train = teacher_samples(teacher, tokenizer, system, TRAIN_PROMPTS, steps * batch // len(TRAIN_PROMPTS), SEED + 1)
    held_out = teacher_samples(teacher, tokenizer, system, HELD_OUT_PROMPTS, 8, SEED + 100)

    def held_out_loss(model: PreTrainedModel) -> float:
        return float(assistant_loss(model, tokenizer, held_out)["loss"])

    before = held_out_loss(load_base_model(cfg.model))
    # the teacher's own loss on its samples (its entropy, near enough): what no student gets under
    floor = float(
        assistant_loss(teacher, tokenizer, [[{"role": "system", "content": system}, *c] for c in held_out])["loss"]
    )
    assert before - floor > 1.0, (before, floor)  # the student starts far from the teacher

    # the reply tokens SFT trains on (each reply and its end-of-turn token); distill samples at most as many
    sft_tokens = sum(label != IGNORE for _, labels in encode_for_loss(tokenizer, train, 1024) for label in labels)
    completion = sft_tokens // (steps * batch)
    assert completion >= 4
    rows = [{"id": str(n), "messages": c} for n, c in enumerate(train)]
    after = {}
    for method in ("sft", "distill"):
        model_dir = run(method, method, rows, steps, batch)
        after[method] = held_out_loss(load_base_model(dataclasses.replace(cfg.model, name_or_path=str(model_dir))))
    sft_drop, distill_drop = before - after["sft"], before - after["distill"]
    assert sft_drop > 0.1, (before, after)  # SFT learns too: two methods that both work, compared
    assert distill_drop > 1.5 * sft_drop, (before, floor, after)


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
