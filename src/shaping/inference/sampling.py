"""What a local model's generation is made of, shared by `generate()` and the engine: a row's
sampling options, its end-of-turn tokens and stop strings, and the Completion it gives."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
