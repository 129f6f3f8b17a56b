"""Device and precision: pick what the hardware does natively, and say why."""

from __future__ import annotations

import importlib.util
import logging

import torch

from shaping.errors import ShapingError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(requested: str, key: str = "train.device") -> str:
    """`auto` picks CUDA, then Apple MPS, then CPU; `cuda` without a CUDA device fails here, before
    any model is loaded, instead of deep inside the first forward pass."""
    if requested == "auto":
        return pick_device()
    if requested not in ("cuda", "cpu"):
        raise ShapingError(f"{key}={requested!r}: choose auto, cuda or cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ShapingError(
            f"{key}=cuda: no CUDA device here (torch {torch.__version__}, "
            f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); use {key}=auto or cpu"
        )
    return requested


def cpu_has_native_bf16() -> bool:
    """bf16 matmuls in hardware: AMX tiles, or AVX512-BF16's dot-product instructions. On an
    AVX512-BF16 EPYC, pretraining the demo's base took 137-146 s in bf16 autocast against 169 s
    in fp32 (docs/training.md). CPUs with neither were reported ~16x slower in bf16, so `auto` keeps fp32
    there."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(requested: str, device: str) -> tuple[str, str]:
    """(precision, reason) for train.precision=`requested` on `device`."""
    if requested not in PRECISIONS:
        raise ShapingError(f"train.precision={requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested == "fp16" and device != "cuda":
        raise ShapingError(
            f"train.precision=fp16 needs CUDA (fp16 autocast with a grad scaler); on {device} use bf16 or fp32"
        )
    if requested != "auto":
        return requested, "set in train.precision"
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA device supports bf16"
        return "fp16", "CUDA device without bf16 (pre-Ampere): fp16 with loss scaling"
    if device == "cpu" and cpu_has_native_bf16():
        return "bf16", "CPU has native bf16 matmuls (AMX or AVX512-BF16)"
    return "fp32", f"{device} without native bf16: bf16 autocast would be emulated and slow"


def resolve_gradient_checkpointing(requested: object, device: str) -> tuple[bool, str]:
    if isinstance(requested, bool):
        return requested, "set in train.gradient_checkpointing"
    if requested != "auto":
        raise ShapingError(f"train.gradient_checkpointing={requested!r}: choose auto, true or false")
    if device == "cuda":
        return True, "GPU: trade ~20% speed for activation memory"
    return False, f"{device}: memory is not the limit, recomputing activations only costs time"


def torch_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def resolve_attn_implementation(requested: str, device: str, dtype: torch.dtype) -> tuple[str, str]:
    """(attn_implementation, reason) for model.attn_implementation=`requested`. `auto` takes
    FlashAttention-2 where it can run (flash-attn installed, CUDA, 16-bit weights), else PyTorch's SDPA."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "flash_attention_2" and not has_flash:
        raise ShapingError(
            "model.attn_implementation=flash_attention_2: flash-attn is not installed "
            "(pip install 'shaping[flash-attn]', CUDA only); use auto or sdpa"
        )
    if requested != "auto":
        return requested, "set in model.attn_implementation"
    if has_flash and device == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return "flash_attention_2", "flash-attn installed, CUDA, 16-bit weights"
    return "sdpa", "flash-attn needs CUDA, 16-bit weights and the flash-attn package"


def check_liger(device: str) -> None:
    """train.liger=true: Liger's kernels are Triton GPU kernels; on a CPU they import but fail at the
    first call ("0 active drivers"), so refuse before loading anything."""
    if importlib.util.find_spec("liger_kernel") is None:
        raise ShapingError("train.liger=true: liger-kernel is not installed (pip install 'shaping[liger]')")
    if device != "cuda":
        raise ShapingError(f"train.liger=true: Liger's Triton kernels need a CUDA GPU, this run is on {device}")
