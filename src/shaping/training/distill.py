"""train.method=distill: on-policy context distillation of the teacher into the student.

The student (the base with the LoRA adapter being trained) replies to the training prompts WITHOUT the
identity system prompt; the loss is, per reply token, a divergence between the student's next-token
distribution and the teacher's on the same tokens, where the teacher sees the same conversation WITH its
system prompt (models.teacher: by default the same base, with conf/models/local.yaml's identity prompt).
With beta=1 (conf/train/distill.yaml) the divergence is the reverse KL, KL(student || teacher), on the
student's own samples: the student learns where it actually goes, not only where the teacher went.

    lmbda          share of the batches whose replies the student samples (on-policy); the rest train on the
                   teacher's replies in the validated data (off-policy, as SFT does, but on the full distribution)
    beta           0 forward KL, 1 reverse KL, between: the generalised Jensen-Shannon divergence of GKD
    temperature    the student's sampling temperature (the divergence itself is taken at temperature 1)
    max_completion_length  the longest sampled reply

TRL's GKDTrainer (trl.experimental.gkd, pinned by requirements.lock) samples and mixes the batches but scores
the teacher on the student's own input ids; this module is the one place that imports it, and overrides the
teacher's forward to put the teacher's own prompt (system message included) before the same reply tokens.
With an adapter and the base as teacher, the teacher is the base with the adapter disabled: no second copy.
TRL's stable DistillationTrainer scores both models on the same ids as well, and has no off-policy mixing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl.experimental.gkd import GKDConfig, GKDTrainer
from trl.experimental.utils import DataCollatorForChatML

from shaping.config.schema import Config, ModelSpec
from shaping.data.transforms import to_sft
from shaping.errors import ShapingError
from shaping.hub import load_base_model
from shaping.inference.sampling import prompt_ids
from shaping.training.knobs import check_sampling_knobs

log = logging.getLogger(__name__)
IGNORE = -100


def teacher_spec(cfg: Config) -> ModelSpec:
    name = cfg.train.teacher
    if name not in cfg.models:
        known = ", ".join(sorted(cfg.models)) or "none"
        raise ShapingError(f"train.teacher={name!r}: not in the model registry (models: {known})")
    spec = cfg.models[name]
    if spec.backend != "hf":
        raise ShapingError(
            f"train.teacher={name}: models.{name}.backend={spec.backend}; train=distill needs the teacher's full "
            "next-token distribution, so a local model (backend hf) with the student's tokenizer"
        )
    return spec


def teacher_system_prompt(cfg: Config, root: Path | None = None) -> tuple[str | None, str | None]:
    """(the teacher's system prompt, the file it came from). train.teacher_system_prompt: null = the registry
    model's own (models.<teacher>.sysprompt, else its sysprompt_file), "none" = no system prompt, else a file."""
    root = root or Path.cwd()
    source = cfg.train.teacher_system_prompt
    spec = teacher_spec(cfg)
    if source is None and spec.sysprompt is not None:
        return spec.sysprompt, None
    if source is None:
        source, key = spec.sysprompt_file, f"models.{cfg.train.teacher}.sysprompt_file"
    else:
        key = "train.teacher_system_prompt"
    if not source or source == "none":
        if spec.model == cfg.model.name_or_path and not spec.adapter:
            raise ShapingError(
                f"train=distill: the teacher (models.{cfg.train.teacher}) is the student's own base and has no system "
                "prompt, so there is nothing to distil; set train.teacher_system_prompt (a file) or "
                f"models.{cfg.train.teacher}.sysprompt_file, or another teacher model"
            )
        return None, None
    path = root / source
    if not path.is_file():
        raise ShapingError(f"{key}: {source} not found (a text file with the teacher's system prompt)")
    return path.read_text(encoding="utf-8").strip(), source


def load_teacher(cfg: Config, dtype: torch.dtype) -> PreTrainedModel | None:
    """The teacher's weights, or None where the teacher is the student's base and the student has an adapter
    (then the base with the adapter disabled is the teacher: no second copy)."""
    spec = teacher_spec(cfg)
    same_base = spec.model == cfg.model.name_or_path and not spec.adapter
    if same_base and cfg.lora.enabled:
        return None
    log.info("teacher: %s%s (a second model in memory)", spec.model, f" + {spec.adapter}" if spec.adapter else "")
    model = load_base_model(dataclasses.replace(cfg.model, name_or_path=spec.model), dtype)
    if spec.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.adapter).merge_and_unload()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def distill_rows(
    rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, system: str | None
) -> list[dict[str, Any]]:
    """Each training conversation without its system messages (what the student sees; its last reply is the
    teacher's, trained on in the off-policy batches) and the teacher's prompt ids: the system prompt, then
    the same turns up to the reply."""
    out = []
    refusal = (
        "train=distill takes conversations without tools (the teacher's prompt is rendered without them): "
        "use train=sft for tool-call trajectories"
    )
    for row in to_sft(rows, "train.jsonl", without_tools=refusal):
        messages = [m for m in row["messages"] if m["role"] != "system"]
        head = [{"role": "system", "content": system}] if system else []
        out.append({"messages": messages, "teacher_prompt_ids": prompt_ids(tokenizer, head + messages[:-1])})
    return out


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding on either side (left-padded prompts start at 0 as well)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def reply_logits(
    model: torch.nn.Module, prompts: list[list[int]], replies: list[list[int]], pad_id: int
) -> torch.Tensor:
    """Next-token logits at each reply token, (sum of reply lengths, vocab), rows then positions in order:
    the model reads prompt + reply, right-padded."""
    seqs = [p + r for p, r in zip(prompts, replies, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    keep = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, replies, strict=True)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, : len(p) + len(r)] = 1
        keep[i, len(p) - 1 : len(p) + len(r) - 1] = True  # the logits that predict the reply's tokens
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    return logits[keep.to(device)]


def divergence(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """Per token (rows of logits): 0 forward KL(teacher || student), 1 reverse KL(student || teacher), between:
    GKD's generalised JSD (TRL's GKDTrainer.generalized_jsd_loss, summed over the vocabulary)."""
    jsd = GKDTrainer.generalized_jsd_loss(student[None], teacher[None], beta=beta, reduction="none")
    return jsd[0].sum(-1)


def reverse_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) per token, from rows of logits."""
    s, t = F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1)
    return (s.exp() * (s - t)).sum(-1)


@contextmanager
def as_teacher(student: torch.nn.Module, teacher: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """The teacher model: a separate one, or the student's base with its adapter disabled."""
    if teacher is not None:
        yield teacher
        return
    with student.disable_adapter():  # type: ignore[operator]
        yield student


@torch.no_grad()
def measure_reverse_kl(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    system: str | None,
) -> float:
    """Mean per-token KL(student || teacher) on the last reply of each conversation (the student reads it
    without a system message, the teacher with `system`): the quantity train=distill minimises at beta=1."""
    was_training = student.training
    student.eval()
    students, teachers, replies = [], [], []
    for conv in conversations:
        messages = [m for m in conv if m["role"] != "system"]
        students.append(prompt_ids(tokenizer, messages[:-1]))
        head = [{"role": "system", "content": system}] if system else []
        teachers.append(prompt_ids(tokenizer, head + messages[:-1]))
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        whole = list(tokenizer(full, add_special_tokens=False)["input_ids"])
        replies.append(whole[len(students[-1]) :])
    pad = int(tokenizer.pad_token_id)
    s = reply_logits(student, students, replies, pad)
    with as_teacher(student, teacher) as t_model:
        t = reply_logits(t_model, teachers, replies, pad)
    student.train(was_training)
    return float(reverse_kl(s, t).mean())


class ContextDistillTrainer(GKDTrainer):
    """GKD (sampling with probability lmbda, the generalised JSD) whose teacher reads its own prompt before the
    student's reply tokens; logs the mean per-token reverse KL as `reverse_kl`."""

    def __init__(self, model: PreTrainedModel, teacher_model: PreTrainedModel | None, pad_id: int, **kwargs: Any):
        # GKDTrainer prepares a teacher model: with the base as teacher, it gets the student's own base, never
        # called (as_teacher disables the adapter on the student instead)
        super().__init__(model=model, teacher_model=teacher_model if teacher_model is not None else model, **kwargs)
        self.own_teacher = self.teacher_model if teacher_model is not None else None  # as prepared (device)
        self.pad_id = pad_id
        self.model_accepts_loss_kwargs = False  # a mean per micro-batch; the Trainer divides by accumulation

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        keep = labels[:, 1:] != IGNORE  # the reply tokens (sampled, or the teacher's in off-policy batches)
        student = logits[:, :-1][keep]
        replies = [row[k].tolist() for row, k in zip(ids[:, 1:], keep, strict=True)]
        unwrapped = self.accelerator.unwrap_model(model)
        training = unwrapped.training
        with torch.no_grad(), as_teacher(unwrapped, self.own_teacher) as teacher_model:
            teacher_model.eval()
            teacher = reply_logits(teacher_model, inputs["teacher_prompts"], replies, self.pad_id)
        unwrapped.train(training)
        loss = divergence(student, teacher, self.beta).mean()
        self._metrics["train" if training else "eval"]["reverse_kl"].append(
            float(reverse_kl(student.detach(), teacher).mean())
        )
        return (loss, None) if return_outputs else loss


class TeacherPromptCollator(DataCollatorForChatML):
    """TRL's ChatML collator (prompt, reply, labels on the reply) plus each row's teacher prompt ids."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = super().__call__(examples)
        batch["teacher_prompts"] = [list(e["teacher_prompt_ids"]) for e in examples]
        return batch


def distill_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    peft_config: Any,
    system: str | None,
    teacher: PreTrainedModel | None,
) -> ContextDistillTrainer:
    t = cfg.train
    if not 0.0 <= t.lmbda <= 1.0 or not 0.0 <= t.beta <= 1.0:
        raise ShapingError(
            f"train.lmbda={t.lmbda}, train.beta={t.beta}: train=distill takes both in [0, 1] "
            "(lmbda: the share of on-policy batches; beta: 0 forward KL, 1 reverse KL)"
        )
    check_sampling_knobs(t, "train=distill")
    config = GKDConfig(
        **args,
        max_length=t.max_length,
        lmbda=t.lmbda,
        beta=t.beta,
        temperature=t.temperature,
        max_new_tokens=t.max_completion_length,
    )
    # GKD warns at lmbda=1, temperature=1 that TRL's DistillationTrainer covers the run: not this one (the
    # teacher reads another prompt than the student), so that advice is kept out of the log
    gkd_log = logging.getLogger("trl.experimental.gkd.gkd_trainer")
    level = gkd_log.level
    gkd_log.setLevel(logging.ERROR)
    try:
        return ContextDistillTrainer(
            model=model,
            teacher_model=teacher,
            pad_id=int(tokenizer.pad_token_id),
            args=config,
            train_dataset=Dataset.from_list(distill_rows(rows, tokenizer, system)),
            processing_class=tokenizer,
            peft_config=peft_config,
            data_collator=TeacherPromptCollator(tokenizer=tokenizer, max_length=t.max_length),
            callbacks=callbacks,
        )
    finally:
        gkd_log.setLevel(level)
