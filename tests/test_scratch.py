from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config.schema import ArchitectureConfig, PretrainConfig
from shaping.training.scratch import build_model, encode_streams, pretrain
from shaping.training.tokenizer import IM_END, train_bpe_tokenizer

from .conftest import DIALOGUES, PROSE


def test_tokenizer_round_trip_and_assistant_mask() -> None:
    tokenizer = train_bpe_tokenizer(PROSE, vocab_size=300, min_frequency=1)
    for text in ["naïve café — 🌱 seeds\n\n  spaced\tout", "def f(x):\n    return x ** 2"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    enc = tokenizer.apply_chat_template(
        DIALOGUES[0], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    kept = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(kept) == DIALOGUES[0][-1]["content"] + IM_END  # the reply and its stop token


def _pretrain(seed: int) -> tuple[float, torch.Tensor]:
    tokenizer = train_bpe_tokenizer(PROSE, vocab_size=300, min_frequency=1)
    torch.manual_seed(seed)
    model = build_model(
        ArchitectureConfig(
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            num_kv_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        tokenizer,
    )
    prose, dialogue, starts = encode_streams(tokenizer, PROSE, DIALOGUES * 10)

    def train(steps: int) -> float:
        config = PretrainConfig(steps=steps, batch_size=4, block_size=16, warmup_steps=1)
        return pretrain(model, prose, dialogue, starts, config, seed=seed).final_loss

    first = train(1)
    final = train(40)
    assert final < first, "pretraining should lower the loss"
    return final, next(model.parameters()).detach().clone()


def test_pretraining_lowers_loss_and_is_seeded() -> None:
    loss_a, weights_a = _pretrain(0)
    loss_b, weights_b = _pretrain(0)
    assert loss_a == loss_b
    torch.testing.assert_close(weights_a, weights_b)


def test_saved_model_reloads_with_transformers(tiny_model_dir: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert tokenizer.eos_token == IM_END and "generation" in tokenizer.chat_template
