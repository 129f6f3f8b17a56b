"""Training backends (hf_peft: TRL + PEFT) and from-scratch tokenizers and small LMs."""

from shaping.training.hardware import pick_device, resolve_gradient_checkpointing, resolve_precision
from shaping.training.models import load_base_model, load_tokenizer

__all__ = [
    "load_base_model",
    "load_tokenizer",
    "pick_device",
    "resolve_gradient_checkpointing",
    "resolve_precision",
]
