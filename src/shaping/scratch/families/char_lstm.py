"""A character-level LSTM in plain PyTorch, with its own character vocabulary.

Saved as `char_lstm.json` (architecture), `vocab.json` (characters; ids 0-2 are the ChatML
special tokens, id 3 the unknown character) and `model.safetensors`. Not a transformers
model, so it cannot be a LoRA fine-tuning base; generate and score load it like any run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shaping.config.schema import ArchitectureConfig
from shaping.errors import ShapingError
from shaping.scratch.families.base import Vocab
from shaping.scratch.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, IM_END, SPECIAL_TOKENS

UNKNOWN = "<unk>"
State = tuple[torch.Tensor, torch.Tensor]  # LSTM (h, c), each (layers, B, hidden)


class CharTokenizer:
    """Characters as tokens. Speaks the slice of the transformers tokenizer API the LM code uses."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.specials = [*SPECIAL_TOKENS, UNKNOWN]
        self.vocab = self.specials + sorted(set(chars) - set(self.specials))
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        self._split = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
        self.eos_token, self.pad_token, self.unk_token = IM_END, END_OF_TEXT, UNKNOWN
        self.eos_token_id, self.pad_token_id = self.ids[IM_END], self.ids[END_OF_TEXT]
        self.unk_token_id = self.ids[UNKNOWN]
        self.chat_template = CHAT_TEMPLATE

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        return cls(ch for text in texts for ch in text)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            if part in SPECIAL_TOKENS:
                ids.append(self.ids[part])
            else:
                ids.extend(self.ids.get(ch, self.unk_token_id) for ch in part)
        return ids

    def __call__(self, texts: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        """Like a transformers tokenizer: {"input_ids": ids} for one text, a list of them for a list."""
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts)}
        return {"input_ids": [self.encode(text) for text in texts]}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.ids.get(token, self.unk_token_id)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        skip = set(range(len(SPECIAL_TOKENS))) if skip_special_tokens else set()
        return "".join(self.vocab[i] for i in ids if i not in skip)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        """ChatML, as the subword tokenizers' template renders it (tokenize=False only)."""
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def save_pretrained(self, folder: str | Path) -> None:
        (Path(folder) / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> CharTokenizer:
        vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
        return cls(vocab[len(SPECIAL_TOKENS) + 1 :])


@dataclass
class CharLSTMConfig:
    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    tie_word_embeddings: bool


class CharLSTM(torch.nn.Module):
    def __init__(self, config: CharLSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = torch.nn.Embedding(config.vocab_size, config.embedding_size)
        self.lstm = torch.nn.LSTM(
            config.embedding_size,
            config.hidden_size,
            config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, input_ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        hidden, state = self.lstm(self.embed(input_ids), state)  # (B, T, H)
        return self.head(hidden), state  # (B, T, V): a hidden state carried between calls generates


@dataclass
class CharLSTMFamily:
    name: str = "char-lstm"
    is_transformers: bool = False
    char_level: bool = True

    def build(self, arch: ArchitectureConfig, vocab: Vocab) -> torch.nn.Module:
        embedding = arch.embedding_size or arch.hidden_size
        if arch.tie_word_embeddings and embedding != arch.hidden_size:
            raise ShapingError(
                "model.architecture.tie_word_embeddings=true needs embedding_size == hidden_size "
                f"({embedding} != {arch.hidden_size}) for char-lstm"
            )
        return CharLSTM(
            CharLSTMConfig(
                vocab_size=vocab.size,
                embedding_size=embedding,
                hidden_size=arch.hidden_size,
                num_layers=arch.num_layers,
                dropout=arch.dropout,
                tie_word_embeddings=arch.tie_word_embeddings,
            )
        )

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        assert isinstance(model, CharLSTM)
        (folder / "char_lstm.json").write_text(json.dumps(asdict(model.config), indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            del state["head.weight"]  # the same tensor as embed.weight
        save_file(state, str(folder / "model.safetensors"))

    def load(self, folder: Path) -> torch.nn.Module:
        config = CharLSTMConfig(**json.loads((folder / "char_lstm.json").read_text(encoding="utf-8")))
        model = CharLSTM(config)
        state = load_file(str(folder / "model.safetensors"))
        model.load_state_dict(state, strict=not config.tie_word_embeddings)
        model.eval()
        return model


FAMILY = CharLSTMFamily()
