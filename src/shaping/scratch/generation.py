"""Generate from and score text with any trained LM: transformers models (with or without a
PEFT adapter) and the char-LSTM, through one token-by-token loop.

One loop rather than `model.generate()` so every family samples the same way: the same
temperature / top-k / top-p filtering, the same seeded generator, the same stop rules, and
exact per-sequence reports (tokens generated, whether EOS ended it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from shaping.errors import ShapingError
from shaping.scratch.families import forward, max_positions
from shaping.scratch.pretraining import Codec, token_id
from shaping.scratch.tokenizer import END_OF_TEXT


@dataclass
class Generation:
    text: str
    tokens_generated: int
    eos_terminated: bool
    stopped_by: str  # eos | stop_sequence | max_new_tokens | max_length


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (set to -inf) what top-k and nucleus (top-p) sampling exclude. logits: (B, V)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Codec,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_sequences: list[str] | None = None,
    stop_on_eos: bool = True,
    seed: int = 0,
    num_return_sequences: int = 1,
) -> list[Generation]:
    """Continue `prompt` `num_return_sequences` times. temperature=0 is greedy (and ignores the seed)."""
    if max_new_tokens < 1 or num_return_sequences < 1:
        raise ShapingError("max_new_tokens and num_return_sequences must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ShapingError(f"temperature={temperature} must be >= 0, top_p={top_p} in (0, 1], top_k={top_k} >= 0")
    stops = [s for s in stop_sequences or [] if s]
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [token_id(tokenizer, END_OF_TEXT)]
    limit = max_positions(model)
    budget = max_new_tokens if limit is None else min(max_new_tokens, limit - len(prompt_ids))
    if budget < 1:
        raise ShapingError(f"the prompt is {len(prompt_ids)} tokens; the model attends to at most {limit}")
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    n = num_return_sequences
    inputs = torch.tensor([prompt_ids] * n, dtype=torch.long, device=device)  # (B, T)
    state: Any = None
    new: list[list[int]] = [[] for _ in range(n)]
    stopped: list[str | None] = [None] * n
    texts = [""] * n
    for _ in range(budget):
        logits, state = forward(model, inputs, state)
        last = logits[:, -1, :].float()  # (B, V)
        if temperature == 0:
            picked = last.argmax(dim=-1)
        else:
            probs = torch.softmax(_filter(last / temperature, top_k, top_p), dim=-1)
            picked = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        for i, token in enumerate(picked.tolist()):
            if stopped[i]:
                continue
            if stop_on_eos and token == eos:
                stopped[i] = "eos"
                continue
            new[i].append(token)
            texts[i] = str(tokenizer.decode(new[i]))
            hit = [texts[i].index(s) for s in stops if s in texts[i]]
            if hit:
                texts[i] = texts[i][: min(hit)]
                stopped[i] = "stop_sequence"
        if all(stopped):
            break
        inputs = picked.unsqueeze(-1)  # (B, 1): the state carries the rest
    ran_out = "max_new_tokens" if budget == max_new_tokens else "max_length"
    return [
        Generation(
            text=texts[i],
            tokens_generated=len(new[i]),
            eos_terminated=stopped[i] == "eos",
            stopped_by=stopped[i] or ran_out,
        )
        for i in range(n)
    ]


@dataclass
class TokenScore:
    token: str
    id: int
    surprisal: float  # -log p(token | everything before), nats
    top: list[dict[str, Any]] = field(default_factory=list)  # [{token, id, prob}], most likely first


@dataclass
class Score:
    loss: float  # mean surprisal, nats per token
    perplexity: float  # exp(loss)
    tokens: int
    bits_per_char: float
    per_token: list[TokenScore] | None = None  # detail_level=per_token only


@torch.no_grad()
def score(
    model: torch.nn.Module, tokenizer: Codec, text: str, *, detail_level: str = "summary", top_k: int = 5
) -> Score:
    """Loss, perplexity and (per_token) each token's surprisal and the model's top-k guesses.

    Every token of `text` is scored: the context starts with <|endoftext|>, as documents do in
    pretraining. Texts longer than the model's window are scored in consecutive windows.
    """
    if detail_level not in ("summary", "per_token"):
        raise ShapingError(f"detail_level={detail_level!r}: choose summary or per_token")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ShapingError("nothing to score: the text is empty")
    device = next(model.parameters()).device
    model.eval()
    sequence = [token_id(tokenizer, END_OF_TEXT), *ids]
    window = max_positions(model) or len(sequence)
    surprisals: list[float] = []
    per_token: list[TokenScore] = []
    for start in range(0, len(ids), window - 1):
        chunk = torch.tensor([sequence[start : start + window]], dtype=torch.long, device=device)  # (1, T)
        logits, _ = forward(model, chunk[:, :-1])
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)  # (T-1, V)
        targets = chunk[0, 1:]
        picked = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        surprisals.extend(picked.tolist())
        if detail_level == "per_token":
            top = torch.topk(logprobs, min(top_k, logprobs.size(-1))) if top_k > 0 else None
            for pos, target in enumerate(targets.tolist()):
                guesses = []
                if top is not None:
                    guesses = [
                        {"token": str(tokenizer.decode([j])), "id": j, "prob": round(math.exp(lp), 6)}
                        for lp, j in zip(top.values[pos].tolist(), top.indices[pos].tolist(), strict=True)
                    ]
                per_token.append(
                    TokenScore(str(tokenizer.decode([target])), target, round(surprisals[len(per_token)], 6), guesses)
                )
    loss = sum(surprisals) / len(surprisals)
    return Score(
        loss=loss,
        perplexity=math.exp(loss),
        tokens=len(surprisals),
        bits_per_char=sum(surprisals) / math.log(2) / max(1, len(text)),
        per_token=per_token if detail_level == "per_token" else None,
    )
