"""Training tokens and loss weights of a conversation, for Tinker training and Tinker-side loss.

`chat_template` tokenizes exactly as hf_peft trains (shaping.training.sft: the same apply_chat_template
call as TRL's SFTTrainer, TRL's marked training template where the model's own has no {% generation %}
markers, and train.loss_weights spans), so a conversation trains on the same data through either
backend. A cookbook renderer builds its own supervised examples.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from shaping.integrations.tinker.renderers import (
    ChatTemplateRenderer,
    CookbookRenderer,
    LossWeights,
    SupervisedRenderer,
)
from shaping.training.sft import IGNORE, tokenize_conversation, training_template


class SupervisedChatTemplateRenderer(ChatTemplateRenderer):
    """The chat-template renderer with hf_peft's training tokenization."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__(tokenizer)
        self._templates: dict[bool, str | None] = {}

    def training_template(self, train_on_prompt: bool) -> str | None:
        if train_on_prompt not in self._templates:
            name = str(self.tokenizer.name_or_path)
            self._templates[train_on_prompt] = training_template(self.tokenizer, train_on_prompt, name)
        return self._templates[train_on_prompt]

    def supervised(
        self, messages: list[dict[str, Any]], train_on_prompt: bool, weights: LossWeights | None = None
    ) -> tuple[list[int], list[float]]:
        row = tokenize_conversation(
            self.tokenizer, messages, self.training_template(train_on_prompt), train_on_prompt, None, weights
        )
        if weights:
            return row["input_ids"], [float(w) for w in row["loss_weights"]]
        return row["input_ids"], [0.0 if label == IGNORE else 1.0 for label in row["labels"]]


def load_supervised_renderer(
    name: str, base_model: str, tokenizer: PreTrainedTokenizerBase | None = None
) -> SupervisedRenderer:
    """load_renderer's renderer, able to build training examples too."""
    if name == ChatTemplateRenderer.name:
        loaded = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(base_model)
        return SupervisedChatTemplateRenderer(loaded)
    return CookbookRenderer(name, base_model)
