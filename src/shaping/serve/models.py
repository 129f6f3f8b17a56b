"""The base model and its LoRA adapters, each under the name a request's `model` field uses."""

from __future__ import annotations

import copy
import logging
from collections.abc import Hashable, Sequence
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from shaping.errors import ShapingError
from shaping.inference.hf import Completion, SamplingOptions, generate_rows

__all__ = ["SamplingOptions", "ServedModels"]

BASE_ROW = "__base__"  # PEFT's name for a row of a mixed batch that runs the base model

log = logging.getLogger(__name__)


class ServedModels:
    """One base model in memory; with adapters it is a PeftModel holding each under its name.
    The base and every LoRA adapter run together in one batch (PEFT's per-row `adapter_names`);
    an adapter PEFT cannot mix (DoRA, non-LoRA types) runs in batches of its own, set active,
    and the base alone runs with the adapters disabled. Not thread-safe: the server calls
    `generate` from one worker thread only."""

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
        self.mixable = {name for name in self.adapter_names if self._mixable(name)}

    def _mixable(self, name: str) -> bool:
        """Whether PEFT can run adapter `name` on some rows of a batch (`adapter_names=`): plain
        LoRA only; this peft refuses DoRA there ("Cannot pass `adapter_names` when DoRA is enabled")."""
        config = getattr(self.model, "peft_config", {}).get(name)
        peft_type = str(getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", "")))
        return peft_type == "LORA" and not getattr(config, "use_dora", False)

    def batch_group(self, name: str) -> Hashable:
        """Requests whose models have the same group can share one generate() call."""
        return name if name in self.adapter_names and name not in self.mixable else self.base_name

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
        return self.generate_rows([name] * len(conversations), conversations, [options] * len(conversations))

    def generate_rows(
        self, names: Sequence[str], conversations: list[list[dict[str, str]]], options: Sequence[SamplingOptions]
    ) -> list[Completion]:
        """One reply per conversation, row i from model names[i] with options[i]; the names must
        share a batch_group."""
        if len({self.batch_group(name) for name in names}) > 1:
            raise ValueError(f"generate_rows: {sorted(set(names))} cannot share one batch")
        model = self.model
        if not isinstance(model, PeftModel):
            return generate_rows(model, self.tokenizer, conversations, options)
        if set(names) == {self.base_name}:
            with model.disable_adapter():
                return generate_rows(model, self.tokenizer, conversations, options)  # type: ignore[arg-type]
        if len(set(names)) == 1:  # one adapter: the plain forward, without the per-row split
            model.set_adapter(names[0])
            return generate_rows(model, self.tokenizer, conversations, options)  # type: ignore[arg-type]
        adapter_names = [BASE_ROW if name == self.base_name else name for name in names]
        return generate_rows(
            model,  # type: ignore[arg-type]  # a PeftModel generates like the model it wraps
            self.tokenizer,
            conversations,
            options,
            adapter_names=adapter_names,
        )
