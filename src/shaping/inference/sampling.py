"""What a local model's generation is made of, shared by `generate()` and the engine: a row's
sampling options, its end-of-turn tokens and stop strings, and the Completion it gives."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from shaping.inference.types import ChatResponse

CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")


@dataclass
class Completion(ChatResponse):
    """One generated reply, with the prompt's length so a server can report usage."""

    prompt_tokens: int = 0


def end_of_turn_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's and the generation config's eos, and the
    ChatML markers where the vocabulary has them (a small model may open a new turn with <|im_start|>
    instead of closing its own with <|im_end|>)."""
    ids: set[int] = set()
    config_eos = getattr(model.generation_config, "eos_token_id", None)
    for eos in (tokenizer.eos_token_id, config_eos):
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    for marker in CHATML_MARKERS:
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(ids)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest of the `stop` strings, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass(frozen=True)
class SamplingOptions:
    """One row's sampling: temperature 0 is greedy; a sampled row with a seed draws from a stream of
    its own (its reply is the same in any batch), one without draws from a stream unseeded rows share."""

    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    seed: int | None  # None: the generator runs on, so replies vary
    top_k: int = 0  # 0: no top-k cut

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


def completion(
    tokenizer: PreTrainedTokenizerBase, row: list[int], end_ids: Container[int], stop: Sequence[str], prompt_tokens: int
) -> Completion:
    """One row's new tokens as a Completion: cut at its first end token, padding dropped, the text cut
    at its first stop string."""
    end = next((i for i, t in enumerate(row) if t in end_ids), None)
    kept = row if end is None else row[:end]
    kept = [t for t in kept if t != tokenizer.pad_token_id]
    text, stopped = truncate_at_stop(str(tokenizer.decode(kept, skip_special_tokens=True)), stop)
    return Completion(
        text=text,
        finish_reason="stop" if end is not None or stopped else "length",
        completion_tokens=len(kept),
        prompt_tokens=prompt_tokens,
    )


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of `messages` rendered by the chat template, ready for the assistant's reply."""
    text = str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_in_tail(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[int], stop: Sequence[str]) -> bool:
    """Whether the reply so far (`tokens`) has produced one of its `stop` strings. Only the tail is
    decoded: a character is at most 4 byte tokens, so a stop string lies within 4 tokens a character
    (+4) of the end. transformers' own `stop_strings` matches token strings and fires on lone byte
    tokens of a byte-level BPE; this decodes."""
    stop = [s for s in stop if s]
    if not stop:
        return False
    window = 4 * max(len(s) for s in stop) + 4
    tail = str(tokenizer.decode(list(tokens[-window:]), skip_special_tokens=True))
    return any(s in tail for s in stop)


_NO_IDS = torch.empty(0, dtype=torch.long)


def _warpers(temperature: float, top_k: int, top_p: float) -> list[LogitsProcessor]:
    """generate()'s warpers, in its order: temperature, top-k, top-p."""
    # dividing by 1.0 changes nothing: skipped
    warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `probs` (b, V), drawn from `generator` by inverse CDF (one uniform per
    row). `torch.multinomial(probs, 1)` races an exponential per vocabulary entry instead (a random
    number for each of b x V entries: 5 ms a step for 64 rows of a 4,096-token vocabulary on one
    CPU core, against 0.3 ms here); with `replacement` and more than one sample it takes the
    inverse-CDF path (cumulative sums in double), and its samples are independent, so the first
    of two is a draw from `probs`."""
    return torch.multinomial(probs, 2, replacement=True, generator=generator)[:, 0]


def pick_tokens(
    scores: torch.Tensor,
    rows: Sequence[SamplingOptions],
    generators: Sequence[torch.Generator | None],
    shared: torch.Generator,
) -> torch.Tensor:
    """Each row's next token (B,) from its logits `scores` (B, V) by its own options: a greedy row
    (temperature 0) its argmax, a sampled row a draw after its own temperature, top-k and top-p, from
    its own generator (a seeded row's: its reply depends on its options, seed and logits only) or,
    without one, from `shared` (one `draw` for those rows). Rows with the same options are
    warped together."""
    chosen = torch.empty(len(rows), dtype=torch.long, device=scores.device)
    greedy = [i for i, row in enumerate(rows) if not row.sampled]
    if greedy:
        index = torch.tensor(greedy, device=scores.device)
        chosen[index] = scores[index].argmax(dim=-1)
    groups: dict[tuple[float, int, float], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.sampled:
            groups[(row.temperature, row.top_k, row.top_p)].append(i)
    for (temperature, top_k, top_p), indices in groups.items():
        whole = len(indices) == len(rows)  # every row, in order: no gather, no scatter
        index = torch.tensor(indices, device=scores.device)
        group = scores if whole else scores[index]
        for warper in _warpers(temperature, top_k, top_p):
            group = warper(_NO_IDS, group)
        probs = torch.softmax(group.float(), dim=-1)  # (b, V)
        unseeded = [j for j, i in enumerate(indices) if generators[i] is None]
        if whole and len(unseeded) == len(rows):
            return draw(probs, shared)
        if unseeded:
            at = torch.tensor(unseeded, device=scores.device)
            chosen[index[at]] = draw(probs[at], shared)
        for j, i in enumerate(indices):
            generator = generators[i]
            if generator is not None:
                chosen[i] = torch.multinomial(probs[j], 1, generator=generator)[0]
    return chosen
