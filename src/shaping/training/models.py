"""Load the base model and tokenizer the config names: the prepared tiny model or a hub model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shaping.config.schema import ModelConfig
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


def load_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    name, revision = base_location(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ShapingError(f"model {name}: its tokenizer has no chat template; use an instruct model")
    return tokenizer


def load_base_model(model_cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    name, revision = base_location(model_cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=revision,
            dtype=dtype,
            attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except OSError as err:
        raise ShapingError(
            f"model.name_or_path={name}: cannot load ({str(err).splitlines()[0]}). A hub model needs network "
            "access to the hub or a local copy: set model.name_or_path=/path/to/model"
        ) from None
    return model
