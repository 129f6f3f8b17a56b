"""Renderers: conversations to prompt tokens, and sampled tokens back to a reply.

A renderer turns conversations into tokens. `chat_template` renders with the tokenizer's own chat
template (the same apply_chat_template call as the local hf backend); a tinker-cookbook renderer name
(`qwen3`, `llama3`, ...) uses the cookbook's renderer, as Tinker's own recipes do; `auto` picks the
cookbook's recommendation for a hub model and `chat_template` for a local folder. Training tokens and
loss masks (`supervised`) are in shaping.integrations.tinker.supervised.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Protocol

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from shaping.errors import ShapingError
from shaping.inference.hf import CHATML_MARKERS
from shaping.integrations.tinker.client import COOKBOOK_HINT

log = logging.getLogger(__name__)

LossWeights = list[tuple[re.Pattern[str], float]]  # train.loss_weights, compiled


class Renderer(Protocol):
    name: str
    tokenizer: Any

    def generation_prompt(self, messages: list[dict[str, Any]]) -> list[int]: ...

    def stop_sequences(self) -> list[int] | list[str]: ...

    def parse(self, tokens: list[int]) -> tuple[str, bool]:
        """The reply's text and whether it ended on a stop sequence (not cut by max_tokens)."""
        ...


class SupervisedRenderer(Renderer, Protocol):
    def supervised(
        self, messages: list[dict[str, Any]], train_on_prompt: bool, weights: LossWeights | None = None
    ) -> tuple[list[int], list[float]]:
        """(token ids, loss weight per token) of a whole conversation: 0 where no loss is taken, else 1
        or the weight of a train.loss_weights span."""
        ...


class ChatTemplateRenderer:
    """The tokenizer's chat template, for sampling (shaping.integrations.tinker.supervised adds the
    training tokens, as hf_peft tokenizes them)."""

    name = "chat_template"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def generation_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        enc: Any = self.tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=True
        )
        return [int(t) for t in enc["input_ids"]]

    def stop_sequences(self) -> list[int]:
        """The ids that end an assistant turn: eos and, where the vocabulary has them, ChatML's markers
        (what the local hf backend stops on)."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        for marker in CHATML_MARKERS:
            token_id = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(ids)

    def parse(self, tokens: list[int]) -> tuple[str, bool]:
        stops = set(self.stop_sequences())
        end = next((i for i, t in enumerate(tokens) if t in stops), None)
        kept = tokens if end is None else tokens[:end]
        return str(self.tokenizer.decode(kept, skip_special_tokens=True)), end is not None


class CookbookRenderer:
    """A tinker-cookbook renderer (the chat formats Tinker's own recipes train and sample with)."""

    def __init__(self, name: str, base_model: str) -> None:
        try:
            from tinker_cookbook import renderers
            from tinker_cookbook.tokenizer_utils import get_tokenizer
        except ImportError:
            raise ShapingError(
                f"backend.renderer={name} is a tinker-cookbook renderer: {COOKBOOK_HINT} "
                "(or set backend.renderer=chat_template to render with the model's own chat template)"
            ) from None
        self.name = name
        self.tokenizer: Any = get_tokenizer(base_model)
        try:
            # Any: the cookbook types messages as its Message TypedDict; rows here are plain dicts
            self.renderer: Any = renderers.get_renderer(name, self.tokenizer, model_name=base_model)
        except Exception as err:  # the cookbook raises its RendererError for a name it does not know
            raise ShapingError(f"backend.renderer={name}: {err}") from None

    def supervised(
        self, messages: list[dict[str, Any]], train_on_prompt: bool, weights: LossWeights | None = None
    ) -> tuple[list[int], list[float]]:
        from tinker_cookbook.renderers import TrainOnWhat

        if weights:
            raise ShapingError(
                f"train.loss_weights: spans are found in the chat template's text; the cookbook renderer {self.name} "
                "has none. Set backend.renderer=chat_template"
            )
        what = TrainOnWhat.ALL_TOKENS if train_on_prompt else TrainOnWhat.ALL_ASSISTANT_MESSAGES
        model_input, mask = self.renderer.build_supervised_example(messages, train_on_what=what)
        return model_input.to_ints(), [1.0 if w > 0 else 0.0 for w in mask.tolist()]

    def generation_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        return list(self.renderer.build_generation_prompt(messages).to_ints())

    def stop_sequences(self) -> list[int] | list[str]:
        return self.renderer.get_stop_sequences()

    def parse(self, tokens: list[int]) -> tuple[str, bool]:
        from tinker_cookbook.renderers import get_text_content

        message, termination = self.renderer.parse_response(tokens)
        return get_text_content(message), termination.is_clean


def resolve_renderer_name(setting: str, base_model: str) -> str:
    """`auto`: the model's own chat template for a local folder, else the cookbook's recommendation."""
    if setting != "auto":
        return setting
    if Path(base_model).is_dir():
        return ChatTemplateRenderer.name
    try:
        from tinker_cookbook import model_info
    except ImportError:
        raise ShapingError(
            f"backend.renderer=auto takes tinker-cookbook's renderer for {base_model}: {COOKBOOK_HINT}, "
            "or set backend.renderer=chat_template (or a cookbook renderer name)"
        ) from None
    try:
        return model_info.get_recommended_renderer_name(base_model)
    except Exception as err:  # KeyError for a model it does not list, its ConfigurationError for an organisation
        log.info("tinker-cookbook has no renderer for %s (%s): using its chat template", base_model, err)
        return ChatTemplateRenderer.name


def load_renderer(name: str, base_model: str, tokenizer: PreTrainedTokenizerBase | None = None) -> Renderer:
    """A resolved renderer name (not `auto`); `tokenizer` is the chat-template renderer's, if already loaded."""
    if name == ChatTemplateRenderer.name:
        return ChatTemplateRenderer(tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(base_model))
    return CookbookRenderer(name, base_model)
