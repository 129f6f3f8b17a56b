"""Iteration-level batching for a local transformers model: rows join and leave a running batch
between decoding steps.

A row is one reply to generate: its prompt's token ids, its own SamplingOptions (temperature,
top-p, top-k, seed, max new tokens, stop strings), optionally the PEFT adapter it runs on
(`"__base__"` for the base model in a mixed batch) and a callback for its text as it grows
(streaming). `Engine.step()` runs one iteration: rows waiting are admitted while the batch has
room (`max_rows` rows, `max_tokens` tokens of prompt plus reply reserved), prefilled together in
one forward over their left-padded prompts and merged into the running batch's KV cache; then
every running row gets its next token from one forward. A row that ends (an end-of-turn token,
its `max_new_tokens`, one of its stop strings) leaves the batch at once with its Completion, and
its room goes to the next row waiting: no row waits for the longest one in its batch.

A greedy row takes the argmax, a seeded row draws from a generator of its own (seeded once), so
both give the reply the row gets alone, whatever shares the batch (up to the float rounding of
batched kernels); unseeded sampled rows share one generator. This is the `SampleRows` rule, the
same draws as `generate()` with that processor.

Only models whose cache is transformers' DynamicCache of full-attention layers run here (Llama,
Qwen, GPT-2, Mistral and the like); `Engine.supports(model)` says whether a model does, and
callers use `generate()` for the rest.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicLayer

from shaping.inference.sampling import Completion, SamplingOptions, completion, pick_tokens, stop_in_tail


@dataclass(eq=False)
class Row:
    """One reply to generate, and its progress."""

    prompt_ids: list[int]
    options: SamplingOptions
    adapter: str | None = None  # the row's adapter (its name for `route`; BASE_ADAPTER: the base)
    min_new_tokens: int = 0
    on_text: Callable[[str], None] | None = None  # each new piece of the reply's text, as made
    alive: Callable[[], bool] | None = None  # False: nobody waits for it any more (dropped)
    group: Any = None  # rows of different groups never share a batch
    tag: Any = None  # the caller's
    tokens: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    sent: int = 0  # characters of the text already given to on_text

    @property
    def reserved(self) -> int:
        return len(self.prompt_ids) + self.options.max_new_tokens


@dataclass
class EngineStats:
    forwards: int = 0  # model forwards (prefills and decoding steps)
    prefills: int = 0
    row_steps: int = 0  # sum over decoding steps of the rows in the batch
    rows: int = 0  # rows finished


class Engine:
    """Runs rows through one model with iteration-level batching (see the module's docstring).
    Not thread-safe: one thread adds rows and calls `step`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        end_ids: Sequence[int],
        *,
        max_rows: int = 64,
        max_tokens: int | None = None,
        admit_batch: int | None = None,
        max_wait_steps: int = 4,
        seed: int | None = None,
        route: Callable[[Sequence[Row]], AbstractContextManager[dict[str, Any]]] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.end_ids = list(end_ids)
        self.end_set = set(self.end_ids)
        self.max_rows = max(1, max_rows)
        self.max_tokens = max_tokens
        # a prefill is a forward of its own: while rows run, admit once this many wait, or an
        # eighth of the running rows if fewer (at least one), or once the oldest has waited
        # max_wait_steps steps; not a forward per row as each arrives into a large batch, and no
        # row left out of a small one, where each step it waits costs a larger share
        self.admit_batch = max(1, self.max_rows // 8 if admit_batch is None else admit_batch)
        self.max_wait_steps = max_wait_steps
        # around each forward: the model set up for these rows (their adapters), yielding extra kwargs
        self.route = route
        # logits for each row's last position only, as generate() asks: a prefill's others would
        # cost a (rows x prompt x vocabulary) tensor, gigabytes for a batch on a large vocabulary
        unwrap = getattr(model, "get_base_model", None)  # a PeftModel's model
        keeps = getattr(unwrap() if callable(unwrap) else model, "_supports_logits_to_keep", None)
        self.keep: dict[str, int] = {"logits_to_keep": 1} if callable(keeps) and keeps() else {}
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.end_ids or [0])[0])
        self.device = model.device
        self.shared = torch.Generator(device=self.device).manual_seed(random.getrandbits(63) if seed is None else seed)
        self.waiting: deque[Row] = deque()
        self.waited = 0  # decoding steps the oldest waiting row has waited
        self.running: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T) 1 where the cache holds a real token
        self.last: torch.Tensor | None = None  # (B,) each row's newest token, not yet in the cache
        self.admitting = True
        self.stats = EngineStats()

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether `model` (a transformers model, or a PeftModel over one) keeps a DynamicCache of
        full-attention layers, which rows can join and leave: probed with a one-token forward."""
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            return False
        cache = DynamicCache()
        try:
            with torch.no_grad():
                model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=model.device), cache=cache, use_cache=True)
        except Exception:  # a model without transformers' cache interface
            return False
        return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)

    # ---- the queue

    def add(self, row: Row) -> None:
        if row.options.sampled and row.options.seed is not None:
            row.generator = torch.Generator(device=self.device).manual_seed(row.options.seed)
        self.waiting.append(row)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def run(self, rows: Iterable[Row], on_done: Callable[[Row, Completion], None] | None = None) -> list[Completion]:
        """Every row to its end (the rows in the order given), calling on_done as each finishes."""
        rows = list(rows)
        for row in rows:
            self.add(row)
        replies: dict[int, Completion] = {}
        while not self.idle:
            for row, reply in self.step():
                replies[id(row)] = reply
                if on_done is not None:
                    on_done(row, reply)
        return [replies[id(row)] for row in rows]

    # ---- one iteration

    def step(self) -> list[tuple[Row, Completion]]:
        """Admit what fits, then one decoding step; the rows that ended, with their replies."""
        finished: list[tuple[Row, Completion]] = []
        self._drop_abandoned()
        group = self._admissible()
        with torch.no_grad():
            if group:
                finished += self._prefill(group)
            if self.running:
                finished += self._decode()
        if self.waiting:
            self.waited += 1
        return finished

    def _drop_abandoned(self) -> None:
        if any(row.alive is not None and not row.alive() for row in self.waiting):
            self.waiting = deque(row for row in self.waiting if row.alive is None or row.alive())
        gone = [i for i, row in enumerate(self.running) if row.alive is not None and not row.alive()]
        if gone:
            self._remove(gone)

    def _admissible(self) -> list[Row]:
        """The waiting rows to admit now, oldest first, while they fit and share the batch's group."""
        if not self.waiting or not self.admitting:
            return []
        free = self.max_rows - len(self.running)
        enough = min(free, self.admit_batch, max(1, len(self.running) // 8))
        if self.running and len(self.waiting) < enough and self.waited < self.max_wait_steps:
            return []
        group = self.running[0].group if self.running else self.waiting[0].group
        reserved = sum(row.reserved for row in self.running)
        admitted: list[Row] = []
        while self.waiting and len(admitted) < free:
            row = self.waiting[0]
            if row.group != group:
                break  # first come, first served: a row of another group waits for this batch to end
            if self.max_tokens is not None and (admitted or self.running) and reserved + row.reserved > self.max_tokens:
                break
            admitted.append(self.waiting.popleft())
            reserved += row.reserved
        if admitted:
            self.waited = 0
        return admitted

    def _forward(self, rows: Sequence[Row], **inputs: Any) -> torch.Tensor:
        with self.route(rows) if self.route is not None else contextlib.nullcontext({}) as extra:
            out = self.model(**inputs, use_cache=True, **self.keep, **extra)
        self.stats.forwards += 1
        return out.logits[:, -1, :].float()

    def _prefill(self, rows: list[Row]) -> list[tuple[Row, Completion]]:
        length = max(len(row.prompt_ids) for row in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):  # left-padded, as generate() pads a batch
            ids[i, length - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, length - len(row.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        logits = self._forward(
            rows,
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
        )
        self.stats.prefills += 1
        self._merge(rows, cache, mask)
        first = len(self.running) - len(rows)
        return self._advance(logits, first)

    def _decode(self) -> list[tuple[Row, Completion]]:
        assert self.cache is not None and self.mask is not None and self.last is not None
        positions = self.mask.sum(dim=1, keepdim=True)  # each row's real tokens so far
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.running), 1))], dim=1)
        self.stats.row_steps += len(self.running)
        logits = self._forward(
            self.running,
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,
        )
        return self._advance(logits, 0)

    # ---- the running batch's cache

    def _merge(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Join the prefilled rows to the running batch: both left-padded to one length, stacked."""
        last = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        if self.cache is None or self.mask is None or self.last is None:
            self.cache, self.mask, self.last, self.running = cache, mask, last, list(rows)
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(_kv_layers(self.cache), _kv_layers(cache), strict=True):
            assert old.keys is not None and old.values is not None and new.keys is not None and new.values is not None
            old.keys = torch.cat([_pad_left(old.keys, length, 2), _pad_left(new.keys, length, 2)])
            old.values = torch.cat([_pad_left(old.values, length, 2), _pad_left(new.values, length, 2)])
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(mask, length, 1)])
        self.last = torch.cat([self.last, last])
        self.running = [*self.running, *rows]

    def _remove(self, indices: Sequence[int]) -> None:
        """Take rows out of the running batch, and the cache's columns no remaining row uses."""
        assert self.mask is not None and self.cache is not None and self.last is not None
        gone = set(indices)
        keep = [i for i in range(len(self.running)) if i not in gone]
        self.running = [self.running[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.last = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        start = int(mask.any(dim=0).long().argmax())  # the first column any remaining row uses
        self.mask, self.last = mask[:, start:], self.last[index]
        for layer in _kv_layers(self.cache):
            assert layer.keys is not None and layer.values is not None
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]

    # ---- tokens

    def _advance(self, logits: torch.Tensor, first: int) -> list[tuple[Row, Completion]]:
        """Rows first.. (whose logits these are) take their next token; the rows that end leave."""
        assert self.last is not None
        rows = self.running[first:]
        tokens = self._pick(logits, rows)
        self.last[first:] = tokens
        ended: list[int] = []
        finished: list[tuple[Row, Completion]] = []
        for offset, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            row.tokens.append(int(token))
            if self._ended(row, int(token)):
                reply = completion(self.tokenizer, row.tokens, self.end_set, row.options.stop, len(row.prompt_ids))
                if row.on_text is not None and reply.text is not None and len(reply.text) > row.sent:
                    row.on_text(reply.text[row.sent :])
                ended.append(first + offset)
                finished.append((row, reply))
                self.stats.rows += 1
            elif row.on_text is not None:
                self._stream(row)
        if ended:
            self._remove(ended)
        return finished

    def _ended(self, row: Row, token: int) -> bool:
        if token in self.end_set or len(row.tokens) >= row.options.max_new_tokens:
            return True
        return stop_in_tail(self.tokenizer, row.tokens, row.options.stop)

    def _stream(self, row: Row) -> None:
        """Hand on the text the row has settled: not a half-made character, nor what could still
        turn out to be the start of a stop string."""
        assert row.on_text is not None
        text = str(self.tokenizer.decode(row.tokens, skip_special_tokens=True)).rstrip("\ufffd")
        hold = max((len(s) - 1 for s in row.options.stop), default=0)
        settled = len(text) - hold
        if settled > row.sent:
            row.on_text(text[row.sent : settled])
            row.sent = settled

    def _pick(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        """Each row's next token by its own options (`pick_tokens`), its end held off until its
        min_new_tokens."""
        for i, row in enumerate(rows):
            if len(row.tokens) < row.min_new_tokens and self.end_ids:
                logits[i, self.end_ids] = float("-inf")
        return pick_tokens(logits, [row.options for row in rows], [row.generator for row in rows], self.shared)


def _kv_layers(cache: DynamicCache) -> list[DynamicLayer]:
    return cast(list[DynamicLayer], cache.layers)  # full-attention layers only: Engine.supports checked


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pad)
