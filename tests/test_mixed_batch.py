"""One generate() call serves the base and its LoRA adapters with different sampling options per
row: each greedy or seeded row's reply is the one that request gets alone (and, for an adapter,
the one that adapter gives unbatched). The batcher runs requests through the Engine, models of one
group together, and applies adapter changes between batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from shaping.inference.hf import Completion
from shaping.serve.batcher import Batcher, Conversation
from shaping.serve.models import SamplingOptions, ServedModels

TOPICS = ["Who are you?", "Tell me about the river.", "What is in the jar?", "Hello", "About bread?", "Seeds?"]


def options(**changes: object) -> SamplingOptions:
    base: dict[str, object] = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 10, "stop": (), "seed": None}
    return SamplingOptions(**{**base, **changes})  # type: ignore[arg-type]


def conversation(i: int) -> Conversation:
    return [{"role": "user", "content": TOPICS[i % len(TOPICS)]}]


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, random_adapter_dir: Path) -> ServedModels:
    return ServedModels(str(tiny_model_dir), {"tuned": str(random_adapter_dir)}, "base", "cpu")


@pytest.fixture(scope="module")
def dora_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, use_dora=True)
    out = tmp_path_factory.mktemp("dora")
    get_peft_model(base, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def lora_bias_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with a bias on lora_B: PEFT mixes it per row, RowLoRA does not run it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_bias=True)
    out = tmp_path_factory.mktemp("lora-bias")
    get_peft_model(base, config).save_pretrained(str(out))
    return out


# greedy and seeded rows with every per-row option different: model, temperature, top-p, top-k,
# seed, max tokens, stop strings
ROWS: list[tuple[str, SamplingOptions]] = [
    ("base", options()),
    ("tuned", options()),
    ("base", options(temperature=0.8, seed=7)),
    ("tuned", options(temperature=0.8, seed=7)),
    ("tuned", options(temperature=1.2, top_p=0.9, top_k=20, seed=3, max_new_tokens=4)),
    ("base", options(temperature=1.0, top_k=5, seed=11, max_new_tokens=16)),
    ("tuned", options(max_new_tokens=3)),
    ("base", options(temperature=0.7, top_p=0.5, seed=5, stop=("e",))),
    ("tuned", options(temperature=1.0, seed=9, stop=(" ", "a"))),
]


def test_mixed_rows_match_each_request_alone(served: ServedModels) -> None:
    names = [name for name, _ in ROWS]
    conversations = [conversation(i) for i in range(len(ROWS))]
    together = served.generate_rows(names, conversations, [o for _, o in ROWS])
    alone = [served.generate(name, [c], o)[0] for (name, o), c in zip(ROWS, conversations, strict=True)]
    assert together == alone
    assert together[0].text != together[1].text or together[2].text != together[3].text  # the adapter matters
    assert together[4].completion_tokens <= 4 and together[6].completion_tokens <= 3
    assert together[5].completion_tokens > 4  # rows ending early do not end the batch
    for i in (7, 8):  # stop strings are cut off, per row
        assert not any(s in (together[i].text or "") for s in ROWS[i][1].stop)


def test_an_adapter_row_matches_that_adapter_served_alone(
    served: ServedModels, tiny_model_dir: Path, random_adapter_dir: Path
) -> None:
    only = ServedModels(str(tiny_model_dir), {"tuned": str(random_adapter_dir)}, "base", "cpu")
    rows = [(name, o) for name, o in ROWS if name == "tuned"]
    mixed = served.generate_rows(
        ["base", *[n for n, _ in rows]], [conversation(0)] * (len(rows) + 1), [options(), *[o for _, o in rows]]
    )[1:]
    assert mixed == [only.generate("tuned", [conversation(0)], o)[0] for _, o in rows]


def test_unseeded_rows_draw_apart(served: ServedModels) -> None:
    replies = served.generate_rows(["tuned"] * 4, [conversation(0)] * 4, [options(temperature=1.0)] * 4)
    assert len({r.text for r in replies}) > 1


def test_dora_adapters_mix_with_the_base_and_lora_through_row_lora(
    tiny_model_dir: Path, random_adapter_dir: Path, dora_adapter_dir: Path, lora_bias_adapter_dir: Path
) -> None:
    """PEFT refuses DoRA per row; RowLoRA runs it, so base, LoRA and DoRA rows share a batch and
    each reply is the one its model gives alone (PEFT's own DoRA forward, the adapter set active).
    Beside an adapter RowLoRA cannot run (a LoRA bias), DoRA batches apart again, until it goes."""
    served = ServedModels(
        str(tiny_model_dir), {"tuned": str(random_adapter_dir), "dora": str(dora_adapter_dir)}, "base", "cpu"
    )
    assert served.batch_group("base") == served.batch_group("tuned") == served.batch_group("dora")
    names = ["dora", "base", "tuned", "dora", "base", "tuned"]
    rows = [options(), options(), options(), *(options(temperature=0.9, seed=i) for i in range(3))]
    conversations = [conversation(i) for i in range(len(names))]
    together = served.generate_rows(names, conversations, rows)
    alone = [served.generate(n, [c], o)[0] for n, c, o in zip(names, conversations, rows, strict=True)]
    assert together == alone
    assert len({r.text for r in together[:3]}) == 3  # the three models answer differently
    served.load_adapter("biased", str(lora_bias_adapter_dir))
    assert served.batch_group("base") == served.batch_group("biased") != served.batch_group("dora")
    with pytest.raises(ValueError, match="cannot share"):
        served.generate_rows(["base", "dora"], [conversation(0)] * 2, [options()] * 2)
    mixed = served.generate_rows(["base", "biased"], [conversation(0)] * 2, [options()] * 2)  # PEFT's split
    assert mixed == [served.generate(n, [conversation(0)], options())[0] for n in ("base", "biased")]
    served.unload_adapter("biased")
    assert served.batch_group("dora") == served.batch_group("base")


def test_batcher_mixes_models_of_a_group_and_keeps_groups_apart(
    tiny_model_dir: Path, random_adapter_dir: Path, dora_adapter_dir: Path, lora_bias_adapter_dir: Path
) -> None:
    """With work waiting, rows run at once (a window of 30 s would time the test out), base and
    adapters in one batch, the DoRA adapter in batches of its own (beside a LoRA with a bias,
    which RowLoRA cannot run, and PEFT refuses DoRA per row: a shared batch would fail); each reply
    is the one its request gets alone."""
    adapters = {"tuned": str(random_adapter_dir), "dora": str(dora_adapter_dir), "biased": str(lora_bias_adapter_dir)}
    served = ServedModels(str(tiny_model_dir), adapters, "base", "cpu")
    assert served.batch_group("dora") != served.batch_group("base")
    models = ["base", "tuned", "biased"] * 3 + ["dora", "dora"]
    rows = [options(temperature=0.9, seed=i, max_new_tokens=4 + i) for i in range(len(models))]

    async def scenario() -> list[list[Completion]]:
        batcher = Batcher(served, max_batch_size=8, window_s=30.0)
        jobs = [batcher.submit(m, conversation(i), 1, rows[i]) for i, m in enumerate(models)]
        replies = await asyncio.wait_for(asyncio.gather(*jobs), 20)
        batcher.close()
        return replies

    replies = asyncio.run(scenario())
    assert [r[0] for r in replies] == [served.generate(m, [conversation(i)], rows[i])[0] for i, m in enumerate(models)]


def test_batcher_waits_the_window_only_when_nearly_empty(served: ServedModels) -> None:
    async def scenario() -> tuple[list[list[Completion]], dict[str, object]]:
        batcher = Batcher(served, max_batch_size=64, window_s=0.3)
        first = asyncio.create_task(batcher.submit("base", conversation(0), 1, options()))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit("base", conversation(1), 2, options(temperature=1.0, seed=4)))
        replies = await asyncio.wait_for(asyncio.gather(first, second), 20)
        counts = batcher.counts()
        batcher.close()
        return replies, counts

    replies, counts = asyncio.run(scenario())
    assert [r.text for r in replies[1]] != [replies[1][0].text] * 2  # n choices: a seed each
    assert counts["batches"] == 1 and counts["rows"] == 3 and counts["requests"] == 2  # one prefill


def test_a_request_whose_model_is_unloaded_while_it_waits_fails_alone(
    tiny_model_dir: Path, random_adapter_dir: Path, served: ServedModels
) -> None:
    """An unload queued (batcher.call) while a batch runs takes effect once it has ended, before any
    row waiting is admitted: the waiting request to that model gets ModelGone, the others their replies."""
    from shaping.serve.batcher import ModelGone

    hot = ServedModels(str(tiny_model_dir), {"hot": str(random_adapter_dir)}, "base", "cpu")

    async def scenario() -> tuple[list[Completion], BaseException | list[Completion], list[Completion]]:
        batcher = Batcher(hot, max_batch_size=8, window_s=0.0)
        first = asyncio.create_task(batcher.submit("base", conversation(0), 1, options(max_new_tokens=40)))
        await asyncio.sleep(0.02)  # the first request is running: what follows waits
        unload = asyncio.create_task(batcher.call(hot.unload_adapter, "hot"))  # queued first
        waiting = [asyncio.create_task(batcher.submit(m, conversation(1), 1, options())) for m in ("hot", "base")]
        gone, kept = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 20)
        await unload
        batcher.close()
        assert not isinstance(kept, BaseException)
        return await first, gone, kept

    first, gone, kept = asyncio.run(scenario())
    assert isinstance(gone, ModelGone) and gone.model == "hot"
    assert hot.names == ["base"]
    assert first + kept == [
        served.generate("base", [conversation(0)], options(max_new_tokens=40))[0],
        served.generate("base", [conversation(1)], options())[0],
    ]


def test_adapters_load_and_unload_in_place(
    served: ServedModels, tiny_model_dir: Path, random_adapter_dir: Path, mismatched_adapter_dir: Path
) -> None:
    """A server started without adapters takes one (the base becomes a PeftModel), answers with it as
    a server started with it does, and is the plain base again once it is unloaded; a load that fails
    half-way (an adapter of another model) leaves no LoRA layer behind."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    from shaping.serve.models import AdapterError

    plain = ServedModels(str(tiny_model_dir), {}, "base", "cpu")
    rows = [options(), options(temperature=0.8, seed=7)]
    base_replies = [plain.generate("base", [conversation(i)], o)[0] for i, o in enumerate(rows)]
    with pytest.raises(AdapterError, match="does not fit the served base model 'base'") as caught:
        plain.load_adapter("other", str(mismatched_adapter_dir))
    assert caught.value.field == "lora_path" and caught.value.status == 400
    assert not any(isinstance(m, BaseTunerLayer) for m in plain.model.modules()) and plain.names == ["base"]
    plain.load_adapter("hot", str(random_adapter_dir))
    assert plain.names == ["base", "hot"] and isinstance(plain.model, PeftModel) and "hot" in plain.mixable
    assert [plain.generate("hot", [conversation(i)], o)[0] for i, o in enumerate(rows)] == [
        served.generate("tuned", [conversation(i)], o)[0] for i, o in enumerate(rows)
    ]
    with pytest.raises(AdapterError, match="does not fit"):  # a reload that does not fit keeps the old one
        plain.load_adapter("hot", str(mismatched_adapter_dir), replace=True)
    plain.load_adapter("hot", str(random_adapter_dir), replace=True)
    assert plain.names == ["base", "hot"] and list(plain.model.peft_config) == ["hot"]
    assert plain.generate("hot", [conversation(0)], rows[0]) == served.generate("tuned", [conversation(0)], rows[0])
    plain.unload_adapter("hot")
    assert plain.names == ["base"] and not isinstance(plain.model, PeftModel)
    assert [plain.generate("base", [conversation(i)], o)[0] for i, o in enumerate(rows)] == base_replies


def test_row_lora_logits_match_peft_with_each_adapter_alone(tiny_model_dir: Path, random_adapter_dir: Path) -> None:
    """RowLoRA's lean forward: each row's logits are PEFT's with that row's adapter active alone
    (a base row's: with the adapters disabled), for two adapters of different rank and scale that
    target different layers; PEFT's active adapter is left as it was."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from shaping.inference.lora_rows import BASE_ADAPTER, RowLoRA

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), random_adapter_dir, "one")
    torch.manual_seed(2)
    model.add_adapter(
        "two", LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    )
    model.eval()
    ids = torch.randint(0, 300, (3, 7))
    names = ["two", BASE_ADAPTER, "one"]
    mixer = RowLoRA(model)
    assert mixer.fits(names) and model.active_adapter == "one"
    with torch.no_grad(), mixer.rows(names) as extra:
        mixed = model(input_ids=ids, **extra).logits
    assert model.active_adapters == ["one"]
    with torch.no_grad():
        with model.disable_adapter():
            alone = {BASE_ADAPTER: model(input_ids=ids).logits}
        for name in ("one", "two"):
            model.set_adapter(name)
            alone[name] = model(input_ids=ids).logits
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[name][i], rtol=1e-5, atol=1e-5)
    # again, with the forwards and row scales it keeps: other rows on the same adapters, then a
    # set of adapters of its own, then the first rows once more
    for again in (["one", "two", BASE_ADAPTER], ["one", BASE_ADAPTER, "one"], names):
        with torch.no_grad(), mixer.rows(again) as extra:
            mixed = model(input_ids=ids, **extra).logits
        for i, name in enumerate(again):
            torch.testing.assert_close(mixed[i], alone[name][i], rtol=1e-5, atol=1e-5)
    # in bf16, each row is PEFT's alone to the bit (the scaled LoRA term rounded as PEFT rounds it)
    model.to(torch.bfloat16)
    with torch.no_grad(), mixer.rows(names) as extra:
        mixed = model(input_ids=ids, **extra).logits
    with torch.no_grad():
        with model.disable_adapter():
            assert torch.equal(mixed[1], model(input_ids=ids).logits[1])
        for i, name in ((0, "two"), (2, "one")):
            model.set_adapter(name)
            assert torch.equal(mixed[i], model(input_ids=ids).logits[i])
    assert not torch.allclose(alone["one"][2], alone["two"][2], atol=1e-3)  # the adapters differ
    assert not torch.allclose(alone["one"][2], alone[BASE_ADAPTER][2], atol=1e-3)
    assert all("forward" not in layer.__dict__ for layer in mixer.layers)  # PEFT's forward is back


def test_row_lora_runs_dora_rows_as_peft_runs_that_adapter_alone(
    tiny_model_dir: Path, random_adapter_dir: Path, dora_adapter_dir: Path
) -> None:
    """DoRA through RowLoRA: each row's logits equal, to the bit, PEFT's DoRA forward with that
    adapter active alone (magnitudes moved off their init, as training moves them)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from shaping.inference.lora_rows import BASE_ADAPTER, RowLoRA

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), random_adapter_dir, "lora")
    model.load_adapter(str(dora_adapter_dir), "dora")
    model.eval()
    with torch.no_grad():
        for layer in model.modules():
            if "dora" in getattr(layer, "lora_magnitude_vector", {}):
                layer.lora_magnitude_vector["dora"].weight.mul_(1.1)
    ids = torch.randint(0, 300, (3, 7))
    names = ["dora", BASE_ADAPTER, "lora"]
    mixer = RowLoRA(model)
    assert mixer.dora == {"dora"} and mixer.fits(names)
    with torch.no_grad(), mixer.rows(names) as extra:
        mixed = model(input_ids=ids, **extra).logits
    with torch.no_grad():
        model.set_adapter("dora")
        assert torch.equal(mixed[0], model(input_ids=ids).logits[0])
        with model.disable_adapter():
            assert torch.equal(mixed[1], model(input_ids=ids).logits[1])
            assert not torch.allclose(mixed[0], model(input_ids=ids).logits[0], atol=1e-3)  # DoRA matters
        model.set_adapter("lora")
        assert torch.equal(mixed[2], model(input_ids=ids).logits[2])
