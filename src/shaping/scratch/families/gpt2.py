"""GPT-2 (learned positions, LayerNorm, GELU MLP), from toy size to GPT-2 small."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from shaping.config.schema import ArchitectureConfig
from shaping.errors import ShapingError
from shaping.scratch.families.base import TransformersFamily, Vocab


def make(arch: ArchitectureConfig, vocab: Vocab) -> PreTrainedModel:
    if arch.hidden_size % arch.num_heads:
        raise ShapingError(
            f"model.architecture: hidden_size={arch.hidden_size} is not divisible by num_heads={arch.num_heads}"
        )
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab.size,
            n_embd=arch.hidden_size,
            n_inner=arch.intermediate_size,
            n_layer=arch.num_layers,
            n_head=arch.num_heads,
            n_positions=arch.max_position_embeddings,
            tie_word_embeddings=arch.tie_word_embeddings,
            resid_pdrop=arch.dropout,
            embd_pdrop=arch.dropout,
            attn_pdrop=arch.dropout,
            bos_token_id=vocab.eos_id,
            eos_token_id=vocab.eos_id,
            pad_token_id=vocab.pad_id,
        )
    )


FAMILY = TransformersFamily("gpt2", make)
