"""The hf_peft training backend: TRL's SFTTrainer with a PEFT LoRA/DoRA adapter (or full fine-tune)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from transformers.integrations import DVCLiveCallback
from trl import SFTConfig, SFTTrainer

from shaping.config.schema import Config
from shaping.errors import ShapingError
from shaping.training.checkpointing import checkpoint_args, resume_checkpoint
from shaping.training.hardware import (
    pick_device,
    resolve_gradient_checkpointing,
    resolve_precision,
    torch_dtype,
)
from shaping.training.launch import RankReport
from shaping.training.models import load_base_model, load_tokenizer

log = logging.getLogger(__name__)
LORA_BIAS = ("none", "all", "lora_only")


@dataclass
class TrainingReport:
    checkpoint_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    backend: str = "hf_peft"


def peft_config(cfg: Config) -> PeftLoraConfig | None:
    lora = cfg.lora
    if not lora.enabled:
        return None
    if lora.bias not in LORA_BIAS:
        raise ShapingError(f"lora.bias={lora.bias!r}: choose one of {', '.join(LORA_BIAS)}")
    bias = cast(Literal["none", "all", "lora_only"], lora.bias)
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.dora,
        bias=bias,
        task_type="CAUSAL_LM",
    )


def sft_config(cfg: Config, saving: dict[str, Any], precision: str, checkpointing: bool, device: str) -> SFTConfig:
    t = cfg.train
    return SFTConfig(
        **saving,  # output_dir and checkpoints (shaping.training.checkpointing)
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # < 1: a fraction of the total steps
        weight_decay=t.weight_decay,
        max_length=t.max_length,
        assistant_only_loss=t.assistant_only_loss,
        packing=t.packing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=checkpointing,
        logging_steps=t.logging_steps,
        use_liger_kernel=t.liger,
        eval_strategy="no",
        report_to="none",  # DVCLive is attached as a callback with our own Live
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
    )


def train(
    cfg: Config, rows: list[dict[str, Any]], output_dir: Path, live_dir: Path, checkpoint_dir: Path | None = None
) -> TrainingReport:
    """Fine-tune the base model on `rows` ({"messages": [...]}); save adapter + tokenizer to `output_dir`."""
    from dvclive import Live

    device = pick_device()
    precision, why_precision = resolve_precision(cfg.train.precision, device)
    checkpointing, why_ckpt = resolve_gradient_checkpointing(cfg.train.gradient_checkpointing, device)
    log.info(
        "device %s, precision %s (%s), gradient checkpointing %s (%s)",
        device,
        precision,
        why_precision,
        checkpointing,
        why_ckpt,
    )

    tokenizer = load_tokenizer(cfg.model)
    # fp32 master weights on CPU; on GPU load in the training dtype (autocast handles the rest)
    model = load_base_model(cfg.model, torch_dtype(precision) if device == "cuda" else torch_dtype("fp32"))
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    if checkpoint_dir is not None:
        saving = checkpoint_args(cfg, checkpoint_dir)
    else:
        saving = {"output_dir": str(output_dir / "trainer"), "save_strategy": "no"}
    args = sft_config(cfg, saving, precision, checkpointing, device)
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=[DVCLiveCallback(live=live), RankReport()],
    )
    params = list(model.parameters()) if trainer.model is None else list(trainer.model.parameters())
    trainable = sum(int(p.numel()) for p in params if p.requires_grad)
    total = sum(int(p.numel()) for p in params)
    log.info(
        "training %d of %d parameters (%.2f%%) on %d rows",
        trainable,
        total,
        100 * trainable / total,
        len(rows),
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(checkpoint_dir) if checkpoint_dir else None)
    seconds = time.perf_counter() - t0
    tokens = next((e["num_tokens"] for e in reversed(trainer.state.log_history) if "num_tokens" in e), 0)
    metrics = {
        "train_loss": round(float(result.training_loss), 6),
        "steps": int(result.global_step),
        "tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
        "seconds": round(seconds, 2),
        "trainable_parameters": trainable,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "device": device,
    }
    live.summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    live.make_summary()
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    log.info("train loss %.4f, %.0f tokens/s", metrics["train_loss"], metrics["tokens_per_second"])
    return TrainingReport(checkpoint_dir=output_dir, metrics=metrics)
