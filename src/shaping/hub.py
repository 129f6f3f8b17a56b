"""Load the base model and tokenizer the config names (the prepared tiny model or a hub model), QLoRA's
4-bit base included: train, evaluate, export and the validation gate's token counts load them alike."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shaping.config.schema import ModelConfig, QuantizationConfig
from shaping.device import pick_device, resolve_attn_implementation, torch_dtype
from shaping.errors import ShapingError

log = logging.getLogger(__name__)


def base_location(model_cfg: ModelConfig) -> tuple[str, str | None]:
    """(name_or_path, revision) to load. A scratch model must have been prepared first."""
    if model_cfg.from_scratch:
        path = Path(model_cfg.name_or_path)
        if not (path / "config.json").is_file():
            raise ShapingError(f"model.name_or_path={path}: no model there; run `dvc repro prepare_base` first")
        return str(path), None
    return model_cfg.name_or_path, model_cfg.revision


def hub_error(name: str, err: OSError) -> ShapingError:
    """One message for a model or tokenizer that cannot be loaded; a gated or private repository
    (401/403 from the hub) says how to pass a token, which is read from the environment only."""
    text = str(err)
    first = text.splitlines()[0] if text else type(err).__name__
    if any(mark in text for mark in ("gated", "401", "403", "Unauthorized", "restricted")):
        return ShapingError(
            f"model.name_or_path={name}: the hub refused access ({first}). It is gated or private: accept its "
            "licence on huggingface.co, then `export HF_TOKEN=hf_...` (read from the environment, never written "
            "anywhere), or point model.name_or_path at a local copy"
        )
    return ShapingError(
        f"model.name_or_path={name}: cannot load ({first}). A hub model needs network "
        "access to the hub or a local copy: set model.name_or_path=/path/to/model"
    )


def load_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    name, revision = base_location(model_cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except OSError as err:
        raise hub_error(name, err) from None
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ShapingError(f"model {name}: its tokenizer has no chat template; use an instruct model")
    return tokenizer


def load_base_model(
    model_cfg: ModelConfig, dtype: torch.dtype = torch.float32, quantization_config: Any = None
) -> PreTrainedModel:
    """The base in `dtype`; with a transformers quantization config (QLoRA's BitsAndBytesConfig) its
    linear layers are quantized as they load."""
    name, revision = base_location(model_cfg)
    extra: dict[str, Any] = {} if quantization_config is None else {"quantization_config": quantization_config}
    attn, why = resolve_attn_implementation(model_cfg.attn_implementation, pick_device(), dtype)
    log.info("attention: %s (%s)", attn, why)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=revision,
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=model_cfg.trust_remote_code,
            **extra,
        )
    except OSError as err:
        raise hub_error(name, err) from None
    return model


def quantization_config(quant: QuantizationConfig | None, compute: torch.dtype) -> object | None:
    """bitsandbytes' 4-bit config for lora.quantization (None without it). Imported here: optional."""
    if quant is None:
        return None
    if quant.bits != 4:
        raise ShapingError(f"lora.quantization.bits={quant.bits}: only 4 (QLoRA) is supported")
    if quant.quant_type not in ("nf4", "fp4"):
        raise ShapingError(f"lora.quantization.quant_type={quant.quant_type!r}: choose nf4 or fp4")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ShapingError(
            "4-bit loading (lora=qlora, shaping.serve --quantization) needs bitsandbytes: pip install -e '.[qlora]'"
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def use_training_kernels(model: torch.nn.Module) -> None:
    """Inference on a 4-bit base computed as training did. bitsandbytes' CPU inference kernel (eval
    mode, AVX512-BF16 CPUs) repacks the 4-bit weights with their scales in bf16, so it computes
    another model than training did, and it fails on layers whose width is no multiple of its
    64-value block (the demo model's 352): this keeps training's path, dequantize then multiply in
    the compute dtype."""
    from bitsandbytes.nn import Linear4bit  # installed: a 4-bit model is loaded

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def compute_dtype(quant: QuantizationConfig | None, precision: str) -> torch.dtype:
    """lora.quantization.compute_dtype; `auto` is the training precision."""
    requested = "auto" if quant is None else quant.compute_dtype
    if requested == "auto":
        return torch_dtype(precision)
    if requested not in ("fp32", "bf16", "fp16"):
        raise ShapingError(f"lora.quantization.compute_dtype={requested!r}: choose auto, fp32, bf16 or fp16")
    return torch_dtype(requested)
