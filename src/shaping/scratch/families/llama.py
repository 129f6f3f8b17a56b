"""Llama (RoPE, RMSNorm, SwiGLU, optional grouped-query attention): the default tiny base."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from shaping.config.schema import ArchitectureConfig
from shaping.errors import ShapingError
from shaping.scratch.families.base import TransformersFamily, Vocab


def make(arch: ArchitectureConfig, vocab: Vocab) -> PreTrainedModel:
    if arch.hidden_size % arch.num_heads or arch.num_heads % arch.num_kv_heads:
        raise ShapingError(
            f"model.architecture: hidden_size={arch.hidden_size} must divide by num_heads={arch.num_heads}, "
            f"and num_heads by num_kv_heads={arch.num_kv_heads}"
        )
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab.size,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.num_kv_heads,
            max_position_embeddings=arch.max_position_embeddings,
            tie_word_embeddings=arch.tie_word_embeddings,
            attention_dropout=arch.dropout,
            bos_token_id=None,
            eos_token_id=vocab.eos_id,
            pad_token_id=vocab.pad_id,
        )
    )


FAMILY = TransformersFamily("llama", make)
