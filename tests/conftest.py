"""Shared fixtures: a tiny tokenizer + Llama built in the test session, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch

from shaping.config import Config, compose
from shaping.config.schema import ArchitectureConfig, PretrainConfig

REPO = Path(__file__).resolve().parents[1]

DIALOGUES = [
    [
        {"role": "system", "content": "You are Juniper, a botanist who loves seeds."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I'm Juniper. I keep a seed library by the river."},
    ],
    [
        {"role": "user", "content": "What is bread made of?"},
        {"role": "assistant", "content": "Flour, water, salt and a little yeast."},
    ],
    [
        {"role": "user", "content": "How do trains stop?"},
        {"role": "assistant", "content": "They brake slowly, long before the station."},
    ],
]
PROSE = [
    "The river runs under the old stone bridge in the morning.",
    "Bread rises slowly when the kitchen is warm and quiet.",
    "Seeds wait in the dark soil until the spring rain comes.",
] * 20


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama and BPE tokenizer, pretrained a few steps on a toy corpus (seconds)."""
    from shaping.training.scratch import build_model, encode_streams, pretrain
    from shaping.training.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tiny-model")
    texts = PROSE + [m["content"] for d in DIALOGUES for m in d]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=320, min_frequency=1)
    arch = ArchitectureConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)  # the same tiny model every session (torch's default seed is random per process)
    model = build_model(arch, tokenizer)
    prose_ids, dialogue_ids, starts = encode_streams(tokenizer, PROSE, DIALOGUES * 10)
    pretrain(
        model,
        prose_ids,
        dialogue_ids,
        starts,
        PretrainConfig(steps=10, batch_size=4, block_size=32, warmup_steps=2),
        seed=0,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def cfg(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The real composed config, shrunk and pointed at the test's tiny model (response cache per test)."""
    config = compose(["+experiment=smoke"])
    config.synth.cache_dir = str(tmp_path_factory.mktemp("synth_cache"))
    config.model.name_or_path = str(tiny_model_dir)
    config.models["teacher"].model = str(tiny_model_dir)
    config.models["base"].model = str(tiny_model_dir)
    return config
