"""TRL + PEFT on the tiny test model: real trainer, a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.training import hf_peft
from shaping.training.hardware import resolve_gradient_checkpointing, resolve_precision

from .conftest import DIALOGUES


def test_precision_and_checkpointing_choices() -> None:
    assert resolve_precision("fp16", "cuda") == ("fp16", "set in train.precision")
    assert resolve_precision("auto", "cpu")[0] in ("fp32", "bf16")
    assert resolve_gradient_checkpointing("auto", "cpu")[0] is False
    assert resolve_gradient_checkpointing("auto", "cuda")[0] is True
    with pytest.raises(ShapingError, match=r"train\.precision"):
        resolve_precision("fp8", "cpu")


def test_lora_sft_trains_the_adapter(cfg: Config, tmp_path: Path) -> None:
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate = 4, 2, 1e-2
    rows = [{"messages": d} for d in DIALOGUES] * 4
    report = hf_peft.train(cfg, rows, tmp_path / "adapter", tmp_path / "live")
    assert report.metrics["steps"] == 4 and report.metrics["tokens"] > 0
    assert report.metrics["precision"] in ("fp32", "bf16")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "live" / "metrics.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero; training must move it"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)(ids).logits
        assert not torch.allclose(tuned(ids).logits, base_logits)
