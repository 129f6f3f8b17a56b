"""TRL + PEFT on the tiny test model: real trainer, a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from shaping.config import Config
from shaping.config.schema import LossWeight
from shaping.device import resolve_device, resolve_gradient_checkpointing, resolve_precision
from shaping.errors import ShapingError
from shaping.hub import hub_error
from shaping.training import hf_peft
from shaping.training.failures import NonFiniteLoss

from .conftest import DIALOGUES, composed


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
    # what shaping.serve --adapter and vLLM --lora-modules load
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "live" / "metrics.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero; training must move it"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)(ids).logits
        assert not torch.allclose(tuned(ids).logits, base_logits)


def test_device_and_fp16_need_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the cuda request would succeed")
    with pytest.raises(ShapingError, match=r"train\.device=cuda: no CUDA device here"):
        resolve_device("cuda")
    with pytest.raises(ShapingError, match=r"train\.precision=fp16 needs CUDA"):
        resolve_precision("fp16", "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "mps")


def test_train_device_cuda_fails_before_loading_anything(cfg: Config, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cfg.train.device = "cuda"
    with pytest.raises(ShapingError, match=r"train\.device=cuda: no CUDA device here.*use train\.device=auto or cpu"):
        hf_peft.train(cfg, [{"messages": DIALOGUES[1]}], tmp_path / "adapter", tmp_path / "live")
    assert not (tmp_path / "live").exists()


def test_gated_model_says_export_hf_token() -> None:
    gated = OSError(
        "You are trying to access a gated repo.\n401 Client Error. Make sure to have access to it at "
        "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct."
    )
    message = str(hub_error("meta-llama/Llama-3.1-8B-Instruct", gated))
    assert "export HF_TOKEN=" in message and "gated" in message and "Llama-3.1-8B-Instruct" in message
    missing = str(hub_error("nobody/nothing", OSError("nobody/nothing is not a local folder")))
    assert "HF_TOKEN" not in missing and "model.name_or_path=/path/to/model" in missing


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "ppo"}, r"train\.method='ppo': choose one of sft, dpo, kto"),
        ({"method": "dpo", "loss_weights": [LossWeight("x", 2.0)]}, r"SFT loss only"),
        ({"packing": True, "loss_weights": [LossWeight("x", 2.0)]}, r"needs padded batches"),
        ({"method": "dpo", "padding_free": True}, r"DPOTrainer pads"),
        ({"method": "kto", "loss_type": "kto", "packing": True}, r"KTOTrainer pads"),
        ({"method": "grpo", "padding_free": True}, r"GRPOTrainer pads"),
        ({"method": "orpo", "packing": True}, r"ORPOTrainer pads"),
        ({"method": "kto", "loss_type": "sigmoid"}, r"train\.loss_type='sigmoid': train\.method=kto takes kto or"),
        ({"method": "kto", "loss_type": "kto", "batch_size": 1}, r"train\.batch_size=1: .*batch_size >= 2"),
    ],
)
def test_impossible_combinations_fail_naming_the_keys(cfg: Config, changes: dict[str, object], message: str) -> None:
    for key, value in changes.items():
        setattr(cfg.train, key, value)
    with pytest.raises(ShapingError, match=message):
        hf_peft.check_options(cfg)


def test_qlora_without_an_adapter_and_merge_without_one_fail(cfg: Config) -> None:
    cfg.lora.enabled = False
    cfg.train.merge = True
    with pytest.raises(ShapingError, match=r"train\.merge=true: lora=none saves the full model"):
        hf_peft.check_options(cfg)
    cfg.lora.quantization = composed("lora=qlora").lora.quantization
    with pytest.raises(ShapingError, match=r"a 4-bit base cannot be fully fine-tuned"):
        hf_peft.check_options(cfg)


def test_nan_loss_stops_training_and_names_the_step(cfg: Config, tmp_path: Path) -> None:
    # an absurd learning rate blows the weights up within a few steps: the loss turns NaN/inf
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate, cfg.train.warmup_ratio = 8, 2, 1e30, 0.0
    rows = [{"messages": d} for d in DIALOGUES] * 4
    with pytest.raises(NonFiniteLoss, match=r"training loss became (nan|inf) at step [2-8] of 8: the run is stopped"):
        hf_peft.train(cfg, rows, tmp_path / "adapter", tmp_path / "live")
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()
