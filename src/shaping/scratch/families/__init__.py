"""Model families trained from scratch: one file each, registered here by `architecture.family`."""

from __future__ import annotations

from typing import Any

import torch

from shaping.errors import ShapingError
from shaping.scratch.families import char_lstm, gpt2, llama
from shaping.scratch.families.base import ModelFamily, TransformersFamily, Vocab
from shaping.scratch.families.char_lstm import CharLSTM, CharTokenizer

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (llama.FAMILY, gpt2.FAMILY, char_lstm.FAMILY)}


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ShapingError(f"model.architecture.family={name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def forward(model: torch.nn.Module, input_ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
    """(logits (B, T, V), state to pass back for the next tokens): a KV cache or an LSTM state."""
    if isinstance(model, CharLSTM):
        return model(input_ids, state)
    out = model(input_ids=input_ids, past_key_values=state, use_cache=state is not None or not model.training)
    return out.logits, out.past_key_values


def max_positions(model: torch.nn.Module) -> int | None:
    """How many tokens the model can attend to at once (None: no limit, an LSTM)."""
    if isinstance(model, CharLSTM):
        return None
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


__all__ = [
    "FAMILIES",
    "CharLSTM",
    "CharTokenizer",
    "ModelFamily",
    "TransformersFamily",
    "Vocab",
    "forward",
    "get_family",
    "max_positions",
]
