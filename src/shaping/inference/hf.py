"""Local generation with transformers: batched, left-padded, seeded per row."""

from __future__ import annotations

import contextlib
import logging
import random
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
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
)

from shaping.device import pick_device
from shaping.inference.engine import Engine, Row
from shaping.inference.lora_rows import BASE_ADAPTER, RowLoRA
from shaping.inference.sampling import (
    CHATML_MARKERS,
    Completion,
    SamplingOptions,
    completion,
    end_of_turn_ids,
    pick_tokens,
    prompt_ids,
    stop_in_tail,
    truncate_at_stop,
)
from shaping.inference.types import ChatRequest, ChatResponse, request_seed

__all__ = [
    "CHATML_MARKERS",
    "Completion",
    "SamplingOptions",
    "completion",
    "end_of_turn_ids",
    "generate_chat",
    "generate_rows",
    "truncate_at_stop",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 64


class SampleRows(LogitsProcessor):
    """Picks every row's next token by that row's own options (`pick_tokens`) and leaves it the only
    token not at -inf, so generate()'s greedy step takes it. transformers' sampling draws the whole
    batch from torch's global generator with one set of options, so a row's reply would depend on its
    neighbours and its place in the batch; here it depends on its options, its seed and its own
    logits only."""

    def __init__(self, rows: Sequence[SamplingOptions], shared_seed: int | None = None) -> None:
        self.rows = list(rows)
        self.seeds = [row.seed if row.sampled else None for row in self.rows]
        self.generators: list[torch.Generator | None] | None = None
        # unseeded rows vary anyway: they share one generator and one `draw` per step
        self.shared_seed = random.getrandbits(63) if shared_seed is None else shared_seed
        self.shared: torch.Generator | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None or self.shared is None:
            self.generators = [
                None if s is None else torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
            self.shared = torch.Generator(device=scores.device).manual_seed(self.shared_seed)
        chosen = pick_tokens(scores, self.rows, self.generators, self.shared)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen[:, None], 0.0)  # type: ignore[return-value]


class StopRowsOnStrings(StoppingCriteria):
    """Ends each row once its reply contains one of its own stop strings (`stop_in_tail`), or once it
    holds its own number of new tokens (rows with a lower max_new_tokens than the batch's)."""

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

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids.shape[1] - self.prompt_length
        done = [new >= m for m in self.max_new]
        for i, stop in enumerate(self.stops):
            if stop and not done[i]:
                done[i] = stop_in_tail(self.tokenizer, input_ids[i, self.prompt_length :].tolist(), stop)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    return [prompt_ids(tokenizer, c) for c in conversations]


_ENGINE_SUPPORT: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def engine_supports(model: Any) -> bool:
    """Engine.supports(model), probed once per model object."""
    if model not in _ENGINE_SUPPORT:
        _ENGINE_SUPPORT[model] = Engine.supports(model)
    return _ENGINE_SUPPORT[model]


def adapter_route(
    model: Any, names: Sequence[str]
) -> Callable[[Sequence[Row]], AbstractContextManager[dict[str, Any]]]:
    """A mixed batch's forward: each row on its own adapter (`row.adapter`, a PEFT adapter name or
    "__base__"), through RowLoRA where the adapters fit it, else PEFT's per-row `adapter_names`."""
    mixer = RowLoRA(model)
    if mixer.fits(names):
        return lambda rows: mixer.rows([row.adapter or BASE_ADAPTER for row in rows])
    return lambda rows: contextlib.nullcontext({"adapter_names": [row.adapter or BASE_ADAPTER for row in rows]})


def generate_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    rows: Sequence[SamplingOptions],
    *,
    adapter_names: list[str] | None = None,
    min_new_tokens: int | Sequence[int] = 0,
    max_rows: int | None = None,
    shared_seed: int | None = None,
    on_done: Callable[[int, Completion], None] | None = None,
) -> list[Completion]:
    """One assistant reply per conversation, each row with its own SamplingOptions (temperature,
    top-p, top-k, seed, max_new_tokens, stop strings), in a batch of up to `max_rows` (default:
    all) rows where a row that ends leaves and the next one waiting joins (the Engine). A greedy or
    seeded row's reply is the one it gets alone. `adapter_names` (a PeftModel's per-row
    adapters, "__base__" for the base) runs several LoRA adapters and the base in the same batch.
    `min_new_tokens` (one for all rows, or one per row) holds off the end-of-turn tokens;
    `shared_seed` seeds the stream unseeded sampled rows share; `on_done(i, reply)` is called as row
    i ends. A model the Engine cannot run goes through one `generate()` call instead (with the
    largest `min_new_tokens` for every row)."""
    if len(rows) != len(conversations):
        raise ValueError(f"generate_rows: {len(rows)} options for {len(conversations)} conversations")
    if adapter_names is not None and len(adapter_names) != len(rows):
        raise ValueError(f"generate_rows: {len(adapter_names)} adapter names for {len(rows)} rows")
    minimums = [min_new_tokens] * len(rows) if isinstance(min_new_tokens, int) else list(min_new_tokens)
    if not engine_supports(model):
        replies = _generate_whole(model, tokenizer, conversations, rows, adapter_names, max(minimums), shared_seed)
        if on_done is not None:
            for i, reply in enumerate(replies):
                on_done(i, reply)
        return replies
    engine = Engine(
        model,
        tokenizer,
        end_of_turn_ids(model, tokenizer),
        max_rows=max_rows or len(rows),
        seed=shared_seed,
        route=None if adapter_names is None else adapter_route(model, adapter_names),
    )
    todo = [
        Row(ids, options, adapter=None if adapter_names is None else adapter_names[i], min_new_tokens=minimums[i])
        for i, (ids, options) in enumerate(zip(_prompt_ids(tokenizer, conversations), rows, strict=True))
    ]
    index = {id(row): i for i, row in enumerate(todo)}
    done = None if on_done is None else (lambda row, reply: on_done(index[id(row)], reply))
    # similar prompt lengths side by side: less padding in each prefill
    order = sorted(todo, key=lambda row: len(row.prompt_ids))
    replies = engine.run(order, done)
    by_row = {id(row): reply for row, reply in zip(order, replies, strict=True)}
    return [by_row[id(row)] for row in todo]


def _generate_whole(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    rows: Sequence[SamplingOptions],
    adapter_names: list[str] | None,
    min_new_tokens: int,
    shared_seed: int | None,
) -> list[Completion]:
    """generate_rows for a model the Engine cannot run: one generate() call, every row until the
    longest ends, each row's token picked by SampleRows."""
    prompts = [str(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)) for c in conversations]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    enc = enc.to(model.device)
    prompt_length = enc["input_ids"].shape[1]
    processors = LogitsProcessorList()
    if any(row.sampled for row in rows):
        processors.append(SampleRows(rows, shared_seed))
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
            min_new_tokens=min_new_tokens,
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
    max_rows: int | None = None,
) -> list[Completion]:
    """Continue each conversation with `n` assistant replies (temperature 0 = greedy).

    Replies come grouped by conversation: conversation i's are at [i * n, (i + 1) * n). A reply
    ends at the first end-of-turn token (finish_reason "stop"), at the first of the `stop`
    strings, which is cut off ("stop"), or after `max_new_tokens` ("length"). `seeds` (one per
    conversation) gives each reply a random stream of its own, so a conversation's replies depend on its
    seed alone, whatever else is in the batch. Without them, `seed` seeds the stream the replies
    share, so the same conversations and seed give the same replies; None: they vary.
    """
    if seeds is not None and len(seeds) != len(conversations):
        raise ValueError(f"generate_chat: {len(seeds)} seeds for {len(conversations)} conversations")
    stop = tuple(s for s in stop if s)
    rows = [
        SamplingOptions(
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            stop=stop,
            # the n replies to one conversation: n streams, each a function of the conversation's seed
            seed=None if seeds is None else seeds[i] if n == 1 else request_seed(seeds[i], str(j)),
        )
        for i in range(len(conversations))
        for j in range(n)
    ]
    return generate_rows(
        model,
        tokenizer,
        [c for c in conversations for _ in range(n)],
        rows,
        min_new_tokens=min_new_tokens,
        max_rows=max_rows,
        shared_seed=seed,
    )


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
        """A reply per request, through one Engine run of up to `batch_size` rows at a time, each
        request with its own options (temperature, top_p, top_k, max_new_tokens, min_new_tokens,
        stop); `on_response(i, reply)` as request i's reply is ready."""
        results: list[ChatResponse | None] = [None] * len(requests)
        conversations: list[list[dict[str, str]]] = []
        rows: list[SamplingOptions] = []
        minimums: list[int] = []
        indices: list[int] = []
        self._calls += 1
        for index, request in enumerate(requests):
            options = self._fit_to_context(request, {**self.defaults, **request.options})
            if isinstance(options, Completion):  # this request alone fails; the rest of the batch runs
                results[index] = options
                if on_response is not None:
                    on_response(index, options)
                continue
            temperature = float(options.get("temperature", 0.0) or 0.0)
            # a keyed request's stream is its own (the same reply whatever shares its batch); an
            # unkeyed one's follows this backend's seed and its place among the calls
            key = request.key or f"call {self._calls} row {index}"
            stop = options.get("stop") or ()
            rows.append(
                SamplingOptions(
                    temperature=temperature,
                    top_p=float(options.get("top_p", 1.0) or 1.0),
                    max_new_tokens=int(options.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                    stop=(stop,) if isinstance(stop, str) else tuple(stop),
                    top_k=int(options.get("top_k") or 0),
                    seed=request_seed(self.seed, key) if temperature > 0 else None,
                )
            )
            minimums.append(int(options.get("min_new_tokens") or 0))
            conversations.append(request.messages)
            indices.append(index)
        if not rows:
            return [r for r in results if r is not None]

        def done(row: int, reply: Completion) -> None:
            results[indices[row]] = reply
            if on_response is not None:
                on_response(indices[row], reply)

        generate_rows(
            self.model,
            self.tokenizer,
            conversations,
            rows,
            min_new_tokens=minimums,
            max_rows=self.batch_size,
            on_done=done,
        )
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
