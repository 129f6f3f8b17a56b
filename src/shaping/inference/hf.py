"""Local generation with transformers: batched, left-padded, seeded per row."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from shaping.device import pick_device
from shaping.inference.types import ChatRequest, ChatResponse, request_seed

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "min_new_tokens")
DEFAULT_MAX_NEW_TOKENS = 64
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


class SampleRows(LogitsProcessor):
    """Picks every row's next token by that row's own options and leaves it the only token not at
    -inf, so generate()'s greedy step takes it: a greedy row (temperature 0) its argmax, a sampled
    row a draw from its own generator (seeded once) after its own temperature, top-k and top-p.
    transformers' sampling draws the whole batch from torch's global generator with one set of
    options, so a row's reply would depend on its neighbours and its place in the batch; here it
    depends on its options, its seed and its own logits only."""

    def __init__(self, rows: Sequence[SamplingOptions]) -> None:
        self.rows = list(rows)
        self.seeds = [row.seed if row.sampled else None for row in self.rows]
        self.generators: list[torch.Generator | None] | None = None
        # unseeded rows vary anyway: they share one generator and one multinomial call per step
        self.shared_seed = random.getrandbits(63)
        self.shared: torch.Generator | None = None
        groups: dict[tuple[float, int, float], list[int]] = defaultdict(list)
        for i, row in enumerate(self.rows):
            if row.sampled:
                groups[(row.temperature, row.top_k, row.top_p)].append(i)
        # rows with the same options are warped together, in generate()'s order: temperature, top-k, top-p
        self.groups: list[tuple[list[int], list[LogitsProcessor]]] = []
        for (temperature, top_k, top_p), indices in groups.items():
            warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
            if top_k > 0:
                warpers.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
            self.groups.append((indices, warpers))
        self.greedy = [i for i, row in enumerate(self.rows) if not row.sampled]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = [
                None if s is None else torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
            self.shared = torch.Generator(device=scores.device).manual_seed(self.shared_seed)
        chosen = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        if self.greedy:
            index = torch.tensor(self.greedy, device=scores.device)
            chosen[index] = scores[index].argmax(dim=-1)
        for indices, warpers in self.groups:
            index = torch.tensor(indices, device=scores.device)
            ids, group = input_ids[index], scores[index]
            for warper in warpers:
                group = warper(ids, group)
            probs = torch.softmax(group.float(), dim=-1)  # (b, V)
            unseeded = [j for j, i in enumerate(indices) if self.generators[i] is None]
            if unseeded:
                at = torch.tensor(unseeded, device=scores.device)
                chosen[index[at]] = torch.multinomial(probs[at], 1, generator=self.shared)[:, 0]
            for i, p in zip(indices, probs, strict=True):
                generator = self.generators[i]
                if generator is not None:
                    chosen[i] = torch.multinomial(p, 1, generator=generator)[0]
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen[:, None], 0.0)  # type: ignore[return-value]


class SampleEachRow(SampleRows):
    """SampleRows with one temperature and top-p for the whole batch and a seed per row."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        super().__init__([SamplingOptions(temperature, top_p, 0, (), seed) for seed in seeds])


class StopRowsOnStrings(StoppingCriteria):
    """Ends each row once its reply contains one of its own stop strings, or once it holds its own
    number of new tokens (rows with a lower max_new_tokens than the batch's). transformers' own
    `stop_strings` matches token strings and fires on lone byte tokens of a byte-level BPE, so this
    decodes the tail."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        stops: Sequence[Sequence[str]],
        max_new: Sequence[int],
        prompt_length: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.stops = [[s for s in stop if s] for stop in stops]
        self.max_new = list(max_new)
        self.prompt_length = prompt_length
        # a character is at most 4 byte tokens, so a stop string lies within this many last tokens
        self.window = 4 * max((len(s) for stop in self.stops for s in stop), default=0) + 4

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids.shape[1] - self.prompt_length
        done = [new >= m for m in self.max_new]
        with_stop = [i for i, stop in enumerate(self.stops) if stop and not done[i]]
        if with_stop:
            tails = input_ids[with_stop, max(self.prompt_length, input_ids.shape[1] - self.window) :].tolist()
            for i, text in zip(with_stop, self.tokenizer.batch_decode(tails, skip_special_tokens=True), strict=True):
                done[i] = any(s in text for s in self.stops[i])
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


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


def generate_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    rows: Sequence[SamplingOptions],
    *,
    adapter_names: list[str] | None = None,
) -> list[Completion]:
    """One assistant reply per conversation, each row with its own SamplingOptions (temperature,
    top-p, top-k, seed, max_new_tokens, stop strings), all in one generate() call. A greedy or
    seeded row's reply is the one it gets alone. `adapter_names` (a PeftModel's per-row
    adapters, "__base__" for the base) runs several LoRA adapters and the base in the same batch."""
    if len(rows) != len(conversations):
        raise ValueError(f"generate_rows: {len(rows)} options for {len(conversations)} conversations")
    prompts = [str(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)) for c in conversations]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    enc = enc.to(model.device)
    prompt_length = enc["input_ids"].shape[1]
    processors = LogitsProcessorList()
    if any(row.sampled for row in rows):
        processors.append(SampleRows(rows))
    extra: dict[str, Any] = {}
    if adapter_names is not None:
        extra["adapter_names"] = adapter_names
    longest = max(row.max_new_tokens for row in rows)
    if any(row.stop for row in rows) or any(row.max_new_tokens < longest for row in rows):
        stopping = StopRowsOnStrings(tokenizer, [r.stop for r in rows], [r.max_new_tokens for r in rows], prompt_length)
        extra["stopping_criteria"] = StoppingCriteriaList([stopping])
    end_ids = end_of_turn_ids(model, tokenizer)
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]  # transformers types generate loosely
            **enc,
            logits_processor=processors,
            max_new_tokens=longest,
            do_sample=False,
            eos_token_id=end_ids,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )
    new_tokens = out[:, prompt_length:]  # (B, new)
    prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()  # (B,)
    return [
        # a finished row is padded on to the batch's longest: cut at its own max_new_tokens first
        completion(tokenizer, row[: options.max_new_tokens], end_ids, options.stop, int(prompt_tokens))
        for row, options, prompt_tokens in zip(new_tokens.tolist(), rows, prompt_lengths, strict=True)
    ]


def generate_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    *,
    temperature: float,
    top_p: float = 1.0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    min_new_tokens: int = 0,
    seed: int | None = 0,
    n: int = 1,
    stop: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> list[Completion]:
    """Continue each conversation with `n` assistant replies (temperature 0 = greedy).

    Replies come grouped by conversation: conversation i's are at [i * n, (i + 1) * n). A reply
    ends at the first end-of-turn token (finish_reason "stop"), at the first of the `stop`
    strings, which is cut off ("stop"), or after `max_new_tokens` ("length"). `seeds` (one per
    conversation) gives each reply a random stream of its own, so a conversation's replies depend on its
    seed alone, whatever else is in the batch. Without them, `seed` reseeds torch's global generator
    before sampling, so the same batch and seed give the same replies; None keeps the generator's state.
    """
    if seeds is not None and len(seeds) != len(conversations):
        raise ValueError(f"generate_chat: {len(seeds)} seeds for {len(conversations)} conversations")
    prompts = [str(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)) for c in conversations]
    prompts = [p for p in prompts for _ in range(n)]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    enc = enc.to(model.device)
    sampling: dict[str, Any] = {"do_sample": temperature > 0}
    processors = LogitsProcessorList()
    if temperature > 0 and seeds is not None:
        # the n replies to one conversation: n streams, each a function of the conversation's seed
        row_seeds = [s if n == 1 else request_seed(s, str(j)) for s in seeds for j in range(n)]
        processors.append(SampleEachRow(row_seeds, temperature, top_p))
        sampling["do_sample"] = False
    elif temperature > 0:
        sampling.update(temperature=temperature, top_p=top_p, top_k=0)
    stop = [s for s in stop if s]
    if stop:  # end each row as soon as it has produced a stop string; the text is cut below
        prompt_length, rows = enc["input_ids"].shape[1], len(prompts)
        stopping = StopRowsOnStrings(tokenizer, [stop] * rows, [max_new_tokens] * rows, prompt_length)
        sampling["stopping_criteria"] = StoppingCriteriaList([stopping])
    end_ids = end_of_turn_ids(model, tokenizer)
    if seed is not None and not processors:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]  # transformers types generate loosely
            **enc,
            logits_processor=processors,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            eos_token_id=end_ids,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    new_tokens = out[:, enc["input_ids"].shape[1] :]  # (B * n, new)
    prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()  # (B * n,)
    return [
        completion(tokenizer, row, end_ids, stop, int(prompt_tokens))
        for row, prompt_tokens in zip(new_tokens.tolist(), prompt_lengths, strict=True)
    ]


class HFBackend:
    """A local transformers model (optionally with a PEFT adapter) as a ChatBackend; `batch_size`
    prompts per generate() call."""

    def __init__(
        self,
        model_name_or_path: str,
        batch_size: int = 16,
        seed: int = 0,
        defaults: dict[str, Any] | None = None,
        adapter: str | None = None,
    ) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path)
        if adapter is not None:
            from peft import PeftModel

            # merged for generation: the same replies as base + adapter, without LoRA's extra matmuls per step
            self.model = PeftModel.from_pretrained(self.model, adapter).merge_and_unload()
        self.model.to(pick_device())  # type: ignore[arg-type]  # transformers types .to() through a decorator
        self.model.eval()
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.defaults = defaults or {}
        # transformers' configs name it max_position_embeddings (GPT-2's n_positions maps to it)
        self.context_length: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self._calls = 0
        self._clip_logged = False

    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        results: list[ChatResponse | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            options = self._fit_to_context(request, {**self.defaults, **request.options})
            if isinstance(options, Completion):  # this request alone fails; the rest of the batch runs
                results[index] = options
                if on_response is not None:
                    on_response(index, options)
                continue
            # the clipped max_new_tokens is part of the key: a batch's rows all fit the context together
            groups[tuple(options.get(k) for k in SAMPLING_KEYS)].append(index)
        for key, indices in groups.items():
            options = {k: v for k, v in zip(SAMPLING_KEYS, key, strict=True) if v is not None}
            # similar lengths per batch: less padding
            indices.sort(key=lambda i: sum(len(m["content"]) for m in requests[i].messages))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                self._calls += 1
                # a keyed request's stream is its own (the same reply whatever shares its batch); an
                # unkeyed one's follows this backend's seed and its place among the calls
                seeds = [
                    request_seed(self.seed, requests[i].key or f"call {self._calls} row {row}")
                    for row, i in enumerate(chunk)
                ]
                replies = generate_chat(
                    self.model,
                    self.tokenizer,
                    [requests[i].messages for i in chunk],
                    seeds=seeds,
                    **options,
                )
                for i, reply in zip(chunk, replies, strict=True):
                    results[i] = reply
                    if on_response is not None:
                        on_response(i, reply)
        return [r for r in results if r is not None]

    def _fit_to_context(self, request: ChatRequest, options: dict[str, Any]) -> dict[str, Any] | Completion:
        """`options` with max_new_tokens (and min_new_tokens) clipped to the room the prompt leaves in the
        model's context (a request's own value too); or an error response for a prompt
        that leaves no room (or that the chat template refuses). Generating past the context would give
        garbage, or an index error inside the model that fails the whole batch."""
        try:
            prompt = str(
                self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            )
        except TemplateError as err:  # e.g. roles out of order: the template raises
            return Completion(text=None, error=f"the chat template rejects the messages ({err})")
        if self.context_length is None:
            return options
        prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        room = self.context_length - prompt_tokens
        if room <= 0:
            return Completion(
                text=None,
                prompt_tokens=prompt_tokens,
                error=f"context_length_exceeded: the model's maximum context length is {self.context_length} "
                f"tokens and the messages take {prompt_tokens}; shorten them",
            )
        wanted = int(options.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        if wanted <= room:
            return options
        if not self._clip_logged:
            self._clip_logged = True
            log.warning(
                "max_new_tokens=%d clipped to %d: a prompt of %d tokens leaves no more of the model's context "
                "of %d (later clips are not logged)",
                wanted,
                room,
                prompt_tokens,
                self.context_length,
            )
        clipped = {**options, "max_new_tokens": room}
        if options.get("min_new_tokens"):
            clipped["min_new_tokens"] = min(int(options["min_new_tokens"]), room)
        return clipped
