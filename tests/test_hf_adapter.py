"""The hf backend loads a base model plus a PEFT adapter (models.<name>.adapter)."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config.schema import ModelSpec
from shaping.errors import ShapingError
from shaping.inference import ChatRequest, ModelRegistry
from shaping.inference.hf import generate_chat

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
