"""The generation Engine (iteration-level batching): rows join a running batch as others leave,
and every greedy or seeded row gets the reply transformers' own `generate()` gives it alone, on the
base or on a LoRA adapter in the same batch; streamed text is the reply, never a stop string."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shaping.inference.engine import Engine, Row
from shaping.inference.hf import SamplingOptions, _generate_whole, _prompt_ids, end_of_turn_ids, generate_rows
from shaping.inference.sampling import draw

TOPICS = ["Who are you?", "Tell me about the river.", "What is in the jar?", "Hello", "About bread?", "Seeds?"]


def options(**changes: object) -> SamplingOptions:
    base: dict[str, object] = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 12, "stop": (), "seed": None}
    return SamplingOptions(**{**base, **changes})  # type: ignore[arg-type]


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": TOPICS[i % len(TOPICS)] + " " * (i % 4)}]  # prompts of several lengths


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tokenizer


def test_rows_joining_mid_batch_match_generate_alone(tiny_model_dir: Path, random_adapter_dir: Path) -> None:
    """12 rows through a batch of at most 3 (so most join while others run), base and adapter mixed,
    greedy and seeded with every option different: each equals `generate()` run on that row alone."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), random_adapter_dir)
    model.eval()
    rows = [
        options(),
        options(temperature=0.8, seed=7, max_new_tokens=20),
        options(temperature=1.2, top_p=0.9, top_k=20, seed=3, max_new_tokens=4),
        options(temperature=1.0, top_k=5, seed=11, max_new_tokens=16),
        options(max_new_tokens=3),
        options(temperature=0.7, top_p=0.5, seed=5, stop=("e",)),
    ] * 2
    adapters = ["__base__", "default"] * 3 + ["default", "__base__"] * 3
    conversations = [chat(i) for i in range(len(rows))]
    engine_replies = generate_rows(model, tokenizer, conversations, rows, adapter_names=adapters, max_rows=3)  # type: ignore[arg-type]
    alone = []
    for conversation, row, adapter in zip(conversations, rows, adapters, strict=True):
        alone += _generate_whole(model, tokenizer, [conversation], [row], [adapter], 0, None)  # type: ignore[arg-type]
    assert engine_replies == alone
    assert engine_replies[0].text != engine_replies[6].text or engine_replies[1].text != engine_replies[7].text


def test_a_short_row_does_not_wait_for_a_long_one(tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    """Room for 3 rows; a 40-token row (held from ending) and seven 3-token rows: the short ones
    pass through the other two places while the long one runs, all done within its steps (whole
    batches would take 3 more), two at a time (a prefill gives a row its first token)."""
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, end_of_turn_ids(model, tokenizer), max_rows=3, admit_batch=1)
    ids = _prompt_ids(tokenizer, [chat(i) for i in range(8)])
    long = Row(ids[0], options(max_new_tokens=40), min_new_tokens=40)
    short = [Row(ids[i], options(max_new_tokens=3), min_new_tokens=3) for i in range(1, 8)]
    order: list[Row] = []
    engine.run([long, *short], lambda row, reply: order.append(row))
    assert order[-1] is long and len(long.tokens) == 40 and all(len(r.tokens) == 3 for r in short)
    assert engine.stats.forwards - engine.stats.prefills == 39  # decoding steps: the long row's, no more
    assert engine.stats.row_steps == 39 + 7 * 2  # the short rows decoded beside it
    assert engine.stats.prefills == 4  # long + 2 short, then 2, 2 and 1 as places free


def test_a_prefill_waits_for_company_in_a_large_batch_not_in_a_small_one(
    tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """Room for 64 (admit_batch 8): beside 16 running rows one arrival waits for a second (an
    eighth of the batch) to share its prefill; beside 4 running rows it is admitted at once."""
    model, tokenizer = tiny
    ids = _prompt_ids(tokenizer, [chat(i) for i in range(20)])
    for running, together in ((16, 2), (4, 1)):
        engine = Engine(model, tokenizer, end_of_turn_ids(model, tokenizer), max_rows=64)
        for i in range(running):
            engine.add(Row(ids[i], options(max_new_tokens=30), min_new_tokens=30))
        engine.step()
        assert len(engine.running) == running and engine.stats.prefills == 1
        for arrival in range(together):
            engine.add(Row(ids[running + arrival], options(max_new_tokens=30), min_new_tokens=30))
            engine.step()
            admitted = arrival == together - 1
            assert len(engine.running) == running + (together if admitted else 0)
            assert engine.stats.prefills == (2 if admitted else 1)


def test_a_prefill_projects_only_each_rows_last_position_to_the_vocabulary(
    tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """As generate() does (`logits_to_keep=1`): the LM head sees one position a row, not the prompt."""
    model, tokenizer = tiny
    ids = _prompt_ids(tokenizer, [chat(i) for i in range(3)])
    seen: list[tuple[int, ...]] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        Engine(model, tokenizer, end_of_turn_ids(model, tokenizer), max_rows=3).run([Row(i, options()) for i in ids])
    finally:
        hook.remove()
    assert max(len(i) for i in ids) > 1 and seen and all(shape[:2] in {(3, 1), (2, 1), (1, 1)} for shape in seen)


def test_a_token_budget_bounds_the_rows_running(tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tokenizer = tiny
    ids = _prompt_ids(tokenizer, [chat(i) for i in range(6)])
    budget = max(len(i) for i in ids) * 2 + 20  # room for two rows of 10 new tokens, not three
    engine = Engine(model, tokenizer, end_of_turn_ids(model, tokenizer), max_rows=8, max_tokens=budget)
    for prompt in ids:
        engine.add(Row(prompt, options(max_new_tokens=10)))
    most = 0
    while not engine.idle:
        engine.step()
        assert sum(row.reserved for row in engine.running) <= budget
        most = max(most, len(engine.running))
    assert most == 2


def test_streamed_pieces_make_the_reply_and_hold_back_stop_strings(
    tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, end_of_turn_ids(model, tokenizer), max_rows=4)
    ids = _prompt_ids(tokenizer, [chat(i) for i in range(4)])
    pieces: dict[int, list[str]] = {i: [] for i in range(4)}
    rows = [
        Row(
            ids[i],
            options(temperature=1.0, seed=i, max_new_tokens=30, stop=("the", "e") if i % 2 else ()),
            on_text=pieces[i].append,
            min_new_tokens=30 if i % 2 == 0 else 0,
        )
        for i in range(4)
    ]
    replies = engine.run(rows)
    for i, reply in enumerate(replies):
        assert "".join(pieces[i]) == reply.text
        if i % 2 == 0:  # no stop: text came as it was made, piece by piece
            assert len(pieces[i]) > 5
        for sent in ("".join(pieces[i][: k + 1]) for k in range(len(pieces[i]))):
            assert not any(s in sent for s in rows[i].options.stop)  # never a stop string, even mid-way


def test_the_hf_backend_gives_each_request_its_own_options_and_the_reply_it_gets_alone(tiny_model_dir: Path) -> None:
    from shaping.inference.hf import HFBackend
    from shaping.inference.types import ChatRequest

    backend = HFBackend(str(tiny_model_dir), batch_size=3, seed=5)
    options: list[dict[str, object]] = [
        {"temperature": 0.0, "max_new_tokens": 5},
        {"temperature": 1.0, "top_k": 5, "max_new_tokens": 12},
        {"temperature": 0.8, "stop": ["e", "a"], "max_new_tokens": 20},
        {"temperature": 1.0, "top_p": 0.5, "max_new_tokens": 9},
        {"temperature": 0.0, "min_new_tokens": 6, "max_new_tokens": 6},
        {"temperature": 1.2, "stop": "o", "max_new_tokens": 16},
    ]
    requests = [ChatRequest(messages=chat(i), options=o, key=f"k{i}") for i, o in enumerate(options)]
    together = backend.generate(requests)  # 6 rows through places for 3, each with its own options
    assert together == [backend.generate([r])[0] for r in requests]
    assert together[4].completion_tokens == 6  # min_new_tokens held the end off
    for reply, stops in ((together[2], "ea"), (together[5], "o")):
        assert not any(s in (reply.text or "") for s in stops)


def test_unseeded_rows_draw_from_their_distribution_and_never_a_cut_token() -> None:
    """`draw` (the unseeded rows' inverse-CDF draw): 20,000 draws per row land on each token at its
    probability (within 0.02, some 10 standard deviations) and never on a token at probability 0 (a
    top-k/top-p cut), the first or the last."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.1, 0.0, 0.0, 0.0, 0.0, 0.9]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([draw(probs, generator) for _ in range(20_000)])  # (20000, 2)
    for row in range(2):
        shares = torch.bincount(draws[:, row], minlength=6).double() / len(draws)
        assert (shares[probs[row] == 0] == 0).all()
        assert (shares - probs[row].double()).abs().max() < 0.02
