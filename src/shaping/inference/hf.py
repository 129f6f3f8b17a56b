"""Local generation with transformers: batched, left-padded, seeded."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shaping.inference.types import ChatRequest, ChatResponse
from shaping.training.hardware import pick_device

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "min_new_tokens")


def generate_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    *,
    temperature: float,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    seed: int = 0,
) -> list[ChatResponse]:
    """Continue each conversation with one assistant reply (temperature 0 = greedy)."""
    prompts = [str(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)) for c in conversations]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    enc = enc.to(model.device)
    sampling: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        sampling.update(temperature=temperature, top_p=top_p, top_k=0)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]  # transformers types generate loosely
            **enc,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    new_tokens = out[:, enc["input_ids"].shape[1] :]  # (B, new)
    responses = []
    for row in new_tokens.tolist():
        ended = tokenizer.eos_token_id in row
        kept = row[: row.index(tokenizer.eos_token_id)] if ended else row
        kept = [t for t in kept if t != tokenizer.pad_token_id]
        text = str(tokenizer.decode(kept, skip_special_tokens=True))
        responses.append(
            ChatResponse(text=text, finish_reason="stop" if ended else "length", completion_tokens=len(kept))
        )
    return responses


class HFBackend:
    """A local transformers model as a ChatBackend; `batch_size` prompts per generate() call."""

    def __init__(
        self,
        model_name_or_path: str,
        batch_size: int = 16,
        seed: int = 0,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path)
        self.model.to(pick_device())  # type: ignore[arg-type]  # transformers types .to() through a decorator
        self.model.eval()
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.defaults = defaults or {}
        self._calls = 0

    def generate(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        results: list[ChatResponse | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            options = {**self.defaults, **request.options}
            groups[tuple(options.get(k) for k in SAMPLING_KEYS)].append(index)
        for key, indices in groups.items():
            options = {k: v for k, v in zip(SAMPLING_KEYS, key, strict=True) if v is not None}
            # similar lengths per batch: less padding
            indices.sort(key=lambda i: sum(len(m["content"]) for m in requests[i].messages))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                self._calls += 1
                replies = generate_chat(
                    self.model,
                    self.tokenizer,
                    [requests[i].messages for i in chunk],
                    seed=self.seed + self._calls,
                    **options,
                )
                for i, reply in zip(chunk, replies, strict=True):
                    results[i] = reply
        return [r for r in results if r is not None]
