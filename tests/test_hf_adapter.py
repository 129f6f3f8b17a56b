"""The hf backend: a base model plus a PEFT adapter (models.<name>.adapter); prompts and replies
kept within the model's context."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config import Config
from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference import ChatRequest, ModelRegistry
from shaping.inference.hf import HFBackend, generate_chat
from shaping.pipeline import Pipeline, TrainingSample, model_request

PROMPTS = ["Who are you?", "Tell me about the river.", "What is in the jar?", "Hello"]
GREEDY = {"temperature": 0.0, "max_new_tokens": 12}


def replies(registry: ModelRegistry, name: str) -> list[str | None]:
    requests = [ChatRequest([{"role": "user", "content": p}], dict(GREEDY)) for p in PROMPTS]
    backend = registry.backend(name)
    return [r.text for r in backend.generate(requests)]  # type: ignore[union-attr]


def test_adapter_replies_are_base_plus_adapter(tiny_model_dir: Path, random_adapter_dir: Path) -> None:
    registry = ModelRegistry(
        {
            "base": ModelSpec(model=str(tiny_model_dir)),
            "tuned": ModelSpec(model=str(tiny_model_dir), adapter=str(random_adapter_dir)),
        }
    )
    tuned = replies(registry, "tuned")
    assert tuned != replies(registry, "base")
    # the backend merges the adapter for speed: its replies equal the unmerged PeftModel's
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(random_adapter_dir)
    ).eval()
    expected = generate_chat(peft, tokenizer, [[{"role": "user", "content": p}] for p in PROMPTS], **GREEDY)
    assert tuned == [c.text for c in expected]
    # a retrained adapter is a new model to the response cache
    assert registry.model_id("tuned") != registry.model_id("base")


def test_bad_adapter_path_names_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    registry = ModelRegistry({"tuned": ModelSpec(model=str(tiny_model_dir), adapter=str(tmp_path))})
    with pytest.raises(ShapingError, match=r"models\.tuned\.adapter=.*adapter_config\.json"):
        registry.backend("tuned")


def test_adapter_over_a_hub_id_is_its_own_model_to_the_cache(random_adapter_dir: Path) -> None:
    """A hub base is not a local folder, but the adapter's files still make a new cache identity."""
    registry = ModelRegistry(
        {
            "base": ModelSpec(model="Qwen/Qwen2.5-0.5B-Instruct"),
            "tuned": ModelSpec(model="Qwen/Qwen2.5-0.5B-Instruct", adapter=str(random_adapter_dir)),
        }
    )
    assert registry.model_id("base") == "hf:Qwen/Qwen2.5-0.5B-Instruct"
    assert registry.model_id("tuned").startswith(f"hf:Qwen/Qwen2.5-0.5B-Instruct+{random_adapter_dir}:")


# the tiny model's context is 1024 tokens (conftest); test_replies_stay_within_the_context's copy of it, 256
TOO_LONG = " ".join(["The river runs under the old stone bridge."] * 80)  # ~1440 tokens
NEAR_FULL = " ".join(["The river runs under the old stone bridge."] * 11)  # ~215 tokens with the template


def test_replies_stay_within_the_context(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A prompt longer than the context fails alone (the rest of the batch is answered); a reply that
    would run past it is clipped to the room left, with one warning however many are clipped."""
    short_context = tmp_path / "tiny-256"  # the same weights with a 256-token context: short prompts reach it
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.max_position_embeddings = 256
    model.save_pretrained(short_context)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(short_context)
    backend = HFBackend(str(short_context), batch_size=8)
    assert backend.context_length == 256
    # min_new_tokens = max_new_tokens: each reply runs to its limit, so the limit it got shows
    full = {"temperature": 0.0, "max_new_tokens": 200, "min_new_tokens": 200}
    requests = [
        ChatRequest([{"role": "user", "content": TOO_LONG}], dict(full)),
        ChatRequest([{"role": "user", "content": NEAR_FULL}], dict(full)),
        ChatRequest([{"role": "user", "content": NEAR_FULL + " Again."}], dict(full)),
        ChatRequest([{"role": "user", "content": "Who are you?"}], {"temperature": 0.0, "max_new_tokens": 8}),
    ]
    delivered: list[int] = []
    with caplog.at_level(logging.WARNING, logger="shaping.inference.hf"):
        replies = backend.generate(requests, on_response=lambda i, r: delivered.append(i))
    too_long, near, near_again, short = replies
    assert sorted(delivered) == [0, 1, 2, 3]
    assert too_long.text is None and too_long.error is not None
    assert too_long.error.startswith("context_length_exceeded: the model's maximum context length is 256 tokens")
    for reply in (near, near_again):
        assert reply.is_success and reply.finish_reason == "length"
        assert 150 < reply.prompt_tokens < 256  # type: ignore[attr-defined]
        assert reply.completion_tokens == 256 - reply.prompt_tokens  # type: ignore[attr-defined]
    assert near.prompt_tokens != near_again.prompt_tokens  # type: ignore[attr-defined]
    assert short.is_success and short.completion_tokens <= 8
    # the short request got the same reply as on its own: the failed and clipped ones did not disturb it
    alone = generate_chat(backend.model, backend.tokenizer, [requests[3].messages], temperature=0.0, max_new_tokens=8)
    assert short.text == alone[0].text
    clipped = [r for r in caplog.records if "clipped" in r.getMessage()]
    assert len(clipped) == 1 and "max_new_tokens=200" in clipped[0].getMessage()


class Echo(Pipeline):
    """Three records, one of which sends a prompt longer than the teacher's context."""

    name = "echo-context"
    teacher = Pipeline.model_dep("teacher")

    def run(self) -> list[TrainingSample]:
        prompts = ["Who are you?", TOO_LONG, "What is bread made of?"]
        return self.run_task(self.ask, records=[{"id": str(i), "prompt": p} for i, p in enumerate(prompts)])

    def ask(self, record: dict[str, Any]) -> Any:
        reply = yield model_request([{"role": "user", "content": record["prompt"]}], model=self.teacher)
        return TrainingSample(id=record["id"], messages=[{"role": "assistant", "content": reply.get_text()}])


def test_synthesis_records_a_prompt_past_the_context_as_an_error(cfg: Config, tmp_path: Path) -> None:
    teacher = cfg.models["teacher"]
    teacher.sysprompt, teacher.sysprompt_file, teacher.max_new_tokens, teacher.temperature = None, None, 6, 0.0
    cfg.synth.max_failure_rate = 0.5
    result = Echo(cfg, output_dir=tmp_path).execute()
    assert (result.samples, result.errors) == (2, 1)
    assert {json.loads(line)["id"] for line in (tmp_path / "samples.jsonl").open()} == {"0", "2"}
    (error,) = [json.loads(line)["__ERROR__"] for line in (tmp_path / "errors.jsonl").open()]
    assert error["error"] == "api_error" and "context_length_exceeded" in error["message"]
    assert error["input_data"] == {"id": "1", "prompt": TOO_LONG}  # provenance: the record and its request
    (step,) = error["steps"]
    assert step["model"] == "teacher" and step["messages"][-1]["content"] == TOO_LONG
    assert step["response"] is None and "maximum context length is 1024" in step["error"]
