"""The contract every model family meets, so a new family is one file plus one registry line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from shaping.config.schema import ArchitectureConfig


@dataclass
class Vocab:
    size: int
    eos_id: int  # ends a reply (<|im_end|>): generation stops on it
    pad_id: int  # <|endoftext|>: separates documents in the pretraining streams


class ModelFamily(Protocol):
    name: str
    is_transformers: bool  # a transformers model: PEFT/TRL can fine-tune it, AutoModelForCausalLM loads it
    char_level: bool  # builds its own character vocabulary instead of using the `tokenizer` stage's

    def build(self, arch: ArchitectureConfig, vocab: Vocab) -> torch.nn.Module:
        """A randomly initialised model (seed torch first for reproducible weights)."""
        ...

    def save(self, model: torch.nn.Module, folder: Path) -> None: ...

    def load(self, folder: Path) -> torch.nn.Module: ...


@dataclass
class TransformersFamily:
    """A family backed by a transformers architecture: saved and loaded the transformers way."""

    name: str
    make: Callable[[ArchitectureConfig, Vocab], PreTrainedModel]
    is_transformers: bool = True
    char_level: bool = False

    def build(self, arch: ArchitectureConfig, vocab: Vocab) -> torch.nn.Module:
        model = self.make(arch, vocab)
        model.generation_config.eos_token_id = vocab.eos_id
        model.generation_config.pad_token_id = vocab.pad_id
        return model

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        assert isinstance(model, PreTrainedModel)
        model.save_pretrained(folder)

    def load(self, folder: Path) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        assert isinstance(model, torch.nn.Module)
        return model
