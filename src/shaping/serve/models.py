"""The base model and its LoRA adapters, each under the name a request's `model` field uses."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from shaping.errors import ShapingError
from shaping.inference.hf import Completion, generate_chat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingOptions:
    """What must match for two requests to share one generate() call."""

    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    seed: int | None  # None: the generator runs on, so replies vary


class ServedModels:
    """One base model in memory; with adapters it is a PeftModel holding each under its name, and
    the base is served with the adapters disabled. Not thread-safe: the server calls `generate`
    from one worker thread only."""

    def __init__(self, model_path: str, adapters: dict[str, str], base_name: str, device: str) -> None:
        if base_name in adapters:
            raise ShapingError(f"--adapter {base_name}=...: the name is the base model's; pick another")
        for name, path in adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ShapingError(
                    f"--adapter {name}={path}: no adapter_config.json there; "
                    "point it at a PEFT adapter folder (the train stage writes models/adapter)"
                )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            base = AutoModelForCausalLM.from_pretrained(model_path)
        except OSError as err:
            raise ShapingError(f"--model {model_path}: cannot load a model and tokenizer there ({err})") from err
        if self.tokenizer.pad_token is None:  # batches are left-padded; Llama-style tokenizers have no pad
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the event loop counts prompt tokens while the worker thread generates; a fast tokenizer
        # used from two threads at once can fail ("Already borrowed"), so counting has its own
        self._counting_tokenizer = copy.deepcopy(self.tokenizer)
        model: PreTrainedModel | PeftModel = base
        for name, path in adapters.items():
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(base, path, adapter_name=name)
            log.info("loaded adapter %s from %s", name, path)
        model.to(device)  # type: ignore[arg-type]  # transformers types .to() through a decorator
        model.eval()
        self.model = model
        self.base_name = base_name
        self.adapter_names = list(adapters)
        self.context_length: int | None = getattr(base.config, "max_position_embeddings", None)

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapter_names]

    def prompt_tokens(self, conversation: list[dict[str, str]]) -> int:
        """The length of the prompt generate_chat builds for `conversation`."""
        tokenizer = self._counting_tokenizer
        prompt = str(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate(
        self, name: str, conversations: list[list[dict[str, str]]], options: SamplingOptions
    ) -> list[Completion]:
        """One reply per conversation from model `name` (the base or an adapter)."""
        if isinstance(self.model, PeftModel):
            if name == self.base_name:
                with self.model.disable_adapter():
                    return self._generate(conversations, options)
            self.model.set_adapter(name)
        return self._generate(conversations, options)

    def _generate(self, conversations: list[list[dict[str, str]]], options: SamplingOptions) -> list[Completion]:
        return generate_chat(
            self.model,  # type: ignore[arg-type]  # a PeftModel generates like the model it wraps
            self.tokenizer,
            conversations,
            temperature=options.temperature,
            top_p=options.top_p,
            max_new_tokens=options.max_new_tokens,
            stop=options.stop,
            seed=options.seed,
        )
