"""The checks only a CUDA GPU can run (`pytest -m gpu`, on a machine with one): precision `auto` and
fp16 on CUDA, QLoRA's CUDA kernels and its merge, Liger's kernels, FSDP2's sharded adapter save and
resume. Skipped, with the reason, where torch sees no GPU; on such a machine the same tests run
where they can (the CPU QLoRA, DDP and DeepSpeed tests are in test_train_export.py and
test_train_launch.py). Models are the session's tiny Llama: the point is the code path, not speed
(bench/train_throughput.py --gpu measures that)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel

from shaping.config import Config
from shaping.hub import compute_dtype, load_base_model, quantization_config
from shaping.training import hf_peft
from shaping.training.export import merged_model

from .conftest import DIALOGUES, REPO, composed
from .test_train_launch import run_train, stage_params
from .test_train_resume import complete_checkpoints, final_state, kill_after_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)"),
]
IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11], [1, 40, 41, 42, 43, 44, 45, 46]])


def train_on_gpu(cfg: Config, out: Path, steps: int = 6) -> hf_peft.TrainingReport:
    cfg.train.device, cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate = "cuda", steps, 2, 2e-2
    cfg.train.logging_steps, cfg.lora.dropout = 1, 0.0
    return hf_peft.train(cfg, [{"messages": d} for d in DIALOGUES] * 4, out, out.parent / "live")


def test_precision_auto_is_bf16_where_the_gpu_has_it(cfg: Config, tmp_path: Path) -> None:
    cfg.train.precision = "auto"
    report = train_on_gpu(cfg, tmp_path / "adapter")
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert report.metrics["device"] == "cuda" and report.metrics["precision"] == expected
    assert math.isfinite(report.metrics["train_loss"])


def test_fp16_trains_with_a_grad_scaler_and_fp32_master_weights(cfg: Config, tmp_path: Path) -> None:
    cfg.train.precision = "fp16"
    args = hf_peft.common_args(cfg, {"output_dir": str(tmp_path)}, "fp16", False, "cuda")
    assert args["fp16"] and not args["bf16"]  # the Trainer's fp16 path: autocast + torch.amp.GradScaler
    report = train_on_gpu(cfg, tmp_path / "adapter")
    assert report.metrics["precision"] == "fp16" and math.isfinite(report.metrics["train_loss"])
    saved = PeftModel.from_pretrained(load_base_model(cfg.model, torch.float32), str(tmp_path / "adapter"))
    lora = [p for n, p in saved.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # the scaler unscaled into fp32 weights


def test_qlora_on_cuda_merges_into_the_dequantised_base(cfg: Config, tmp_path: Path) -> None:
    cfg.lora.quantization, cfg.train.precision = composed("lora=qlora").lora.quantization, "bf16"
    report = train_on_gpu(cfg, tmp_path / "adapter", steps=3)
    assert report.metrics["adapter"] == "qlora"
    bnb = quantization_config(cfg.lora.quantization, compute_dtype(cfg.lora.quantization, "bf16"))
    quantized = load_base_model(cfg.model, torch.bfloat16, quantization_config=bnb)  # bitsandbytes: onto the GPU
    assert type(quantized.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert quantized.device.type == "cuda"
    tuned = PeftModel.from_pretrained(quantized, str(tmp_path / "adapter")).eval()
    merged = merged_model(cfg, tmp_path / "adapter").eval().to("cuda", torch.float32)
    with torch.no_grad():
        expected = tuned(IDS.cuda()).logits.float()
        got = merged(IDS.cuda()).logits
    # bf16 compute in the 4-bit model against fp32 in the merged one: bf16's 3 significant digits
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs pip install -e '.[liger]'")
def test_liger_kernels_train_to_the_same_losses(cfg: Config, tmp_path: Path) -> None:
    cfg.train.precision = "fp32"
    plain = train_on_gpu(cfg, tmp_path / "plain" / "adapter")
    cfg.train.liger = True
    liger = train_on_gpu(cfg, tmp_path / "liger" / "adapter")
    assert liger.metrics["train_loss"] == pytest.approx(plain.metrics["train_loss"], rel=1e-3)


@pytest.mark.slow
def test_fsdp2_saves_the_adapter_whole_and_resumes_after_a_kill(cfg: Config, tmp_path: Path) -> None:
    """accelerate=fsdp (FSDP2, SHARDED_STATE_DICT checkpoints) on every visible GPU, one process
    each: killed after a checkpoint and run again, it ends with the adapter and per-step losses of
    an uninterrupted single-process run (fp32 on both sides)."""
    gpus = torch.cuda.device_count()
    cfg.train.device, cfg.train.precision = "cuda", "fp32"
    cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size = 1, -1, 2
    cfg.train.learning_rate, cfg.train.logging_steps, cfg.train.save_steps = 1e-2, 1, 4
    cfg.train.batch_size = 2 * gpus  # the same global batch on one process as on `gpus`
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    proc = run_train(single, stage_params(cfg, single, rows=48))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    expected_weights, expected_losses = final_state(single)

    cfg.train.batch_size, cfg.train.launcher = 2, "accelerate"
    cfg.accelerate = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "accelerate" / "fsdp.yaml"))
    cfg.accelerate["num_processes"] = gpus
    params = stage_params(cfg, fsdp, rows=48)
    kill_after_checkpoint(fsdp, params)
    saved = max(complete_checkpoints(fsdp))
    proc = run_train(fsdp, params)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"checkpoint-{saved} (step {saved})" in log
    weights, losses = final_state(fsdp)
    assert [s for s, _ in losses] == [s for s, _ in expected_losses]
    torch.testing.assert_close([v for _, v in losses], [v for _, v in expected_losses], rtol=1e-3, atol=1e-4)
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():  # whole tensors gathered from the shards, not one rank's slice
        assert tensor.shape == expected_weights[name].shape, name
        torch.testing.assert_close(tensor, expected_weights[name], rtol=1e-3, atol=1e-4)
