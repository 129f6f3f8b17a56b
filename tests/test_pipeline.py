"""The Pipeline API against the real local transformers backend (the tiny test model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.pipeline import Pipeline, PipelineError, TrainingSample, load_pipeline_class, model_request

from .conftest import REPO


class Chain(Pipeline):
    """Five records: 3 raises a PipelineError at once, 4 a bug after its requests (2 of 5 fail on purpose)."""

    name = "chain"
    teacher = Pipeline.model_dep("teacher")

    def __init__(self, config: Config, **kwargs: Any) -> None:
        config.synth.max_failure_rate = 0.5
        super().__init__(config, **kwargs)

    def run(self) -> list[TrainingSample]:
        return self.run_task(self.task, records=[{"id": str(i), "prompt": f"tell me {i}"} for i in range(5)])

    def task(self, record: dict[str, Any]) -> Any:
        if record["id"] == "3":
            raise PipelineError("no three", error_type="skip_three")
        first = yield model_request(
            [{"role": "user", "content": record["prompt"]}],
            model=self.teacher,
            max_new_tokens=4,
            temperature=0,
        )
        pair = yield [
            model_request([{"role": "user", "content": "a"}], model=self.teacher, max_new_tokens=3),
            model_request([{"role": "user", "content": "b"}], model=self.teacher, max_new_tokens=5),
        ]
        if record["id"] == "4":
            raise ValueError("a bug")
        assert isinstance(pair, list) and len(pair) == 2
        return TrainingSample(
            id=record["id"],
            messages=[
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": first.get_text() + "|" + pair[0].get_text()},
            ],
        )


def test_tasks_chain_in_order_and_errors_keep_provenance(cfg: Config, tmp_path: Path) -> None:
    cfg.synth.limit = None  # the smoke experiment sets one; this run is whole
    pipeline = Chain(cfg, output_dir=tmp_path)
    result = pipeline.execute()
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["0", "1", "2"]  # input order, errors filtered out
    first = samples[0]
    assert len(first["steps"]) == 3  # one sequential request, then a parallel pair
    assert [s["options"].get("max_new_tokens") for s in first["steps"]] == [4, 3, 5]
    assert first["steps"][0]["messages"][0]["role"] == "system"  # the teacher's identity was injected
    assert first["input_data"] == {"id": "0", "prompt": "tell me 0"}
    errors = [json.loads(line)["__ERROR__"] for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    by_id = {e["input_data"]["id"]: e for e in errors}
    assert by_id["3"]["error"] == "skip_three" and by_id["3"]["steps"] == []
    assert by_id["4"]["error"] == "unexpected_error" and "a bug" in by_id["4"]["message"]
    assert len(by_id["4"]["steps"]) == 3
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["samples"] == 3 and manifest["errors"] == 2 and manifest["partial"] is False
    # records 0,1,2,4 made three requests each; their pairs are the same two requests, sent once each
    assert manifest["requests_sent"] == 4 + 2
    assert result.samples == 3


def test_greedy_generation_is_reproducible(cfg: Config, tmp_path: Path) -> None:
    outputs = []
    for run in range(2):
        pipeline = Chain(cfg, output_dir=tmp_path / str(run), annotate=False)
        pipeline.execute()
        outputs.append((tmp_path / str(run) / "samples.jsonl").read_text())
    assert outputs[0] == outputs[1]
    assert set(json.loads(outputs[0].splitlines()[0])) == {"id", "messages"}  # minimal format


def test_limit_marks_partial(cfg: Config, tmp_path: Path) -> None:
    result = Chain(cfg, output_dir=tmp_path, limit=2).execute()
    assert result.samples == 2 and result.manifest["partial"] is True and result.manifest["limit"] == 2


def test_query_and_unknown_model(cfg: Config, tmp_path: Path) -> None:
    pipeline = Chain(cfg, output_dir=tmp_path)
    reply = pipeline.query("teacher", [{"role": "user", "content": "hello"}], max_new_tokens=3, temperature=0)
    assert reply.is_success and isinstance(reply.get_text(), str)
    with pytest.raises(ShapingError, match=r"models\.nobody: not in the model registry"):
        pipeline.query("nobody", [{"role": "user", "content": "hello"}])


def test_demo_pipeline_loads_by_name() -> None:
    cls = load_pipeline_class("identity_distillation", REPO / "pipelines")
    assert cls.name == "identity_distillation"
    assert set(cls.model_deps()) == {"teacher", "base"} and set(cls.file_deps()) == {"identity", "prompts"}
    with pytest.raises(ShapingError, match="pipeline=nope"):
        load_pipeline_class("nope", REPO / "pipelines")


def test_identity_distillation_refuses_a_teacher_reply_that_quotes_its_system_prompt() -> None:
    """At seed 1 the demo's teacher once wrote a persona prompt back instead of a reply; the validate gate's
    contract (tests/data/test_identity_contract.py: no 12 words of identity.md verbatim) then failed the
    whole run. The pipeline makes such a reply an error record, by the contract's own rule."""
    import sys

    cls = load_pipeline_class("identity_distillation", REPO / "pipelines")
    quotes = sys.modules[cls.__module__].quotes
    identity = (REPO / "data" / "identity" / "identity.md").read_text(encoding="utf-8")
    echo = (
        "Sem\nYou are Juniper, a field botanist in a quiet river valley. You are patient and warm. You often "
        'say "Hello from the river valley." and "Good seeds grow slowly." You love gardening.'
    )
    assert quotes(echo, identity)
    assert not quotes("I'm Juniper. I work as a field botanist in a quiet river valley.", identity)
    assert not quotes(identity, "too short a document")
