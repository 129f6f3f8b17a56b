"""Loss and perplexity on assistant tokens only: the same tokens the train stage learns."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

IGNORE = -100


def encode_for_loss(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per conversation; labels are IGNORE outside assistant replies."""
    encoded = []
    for messages in conversations:
        enc: Any = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])[:max_length]
        mask = list(enc["assistant_masks"])[:max_length]
        encoded.append((ids, [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]))
    return encoded


def assistant_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    batch_size: int = 16,
    max_length: int = 1024,
) -> dict[str, Any]:
    """Mean next-token loss over every assistant token of `conversations`, and its perplexity."""
    encoded = encode_for_loss(tokenizer, conversations, max_length)
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chunk])  # (B, T)
        labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in chunk])  # (B, T)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk])
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
        shift_labels = labels[:, 1:].reshape(-1).to(model.device)
        total += torch.nn.functional.cross_entropy(
            shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((shift_labels != IGNORE).sum().item())
    if count == 0:
        raise ValueError("no assistant tokens to score (is the chat template missing {% generation %}?)")
    loss = total / count
    return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 4), "tokens": count}
