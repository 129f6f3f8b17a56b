"""Sampled replies depend on the seed and the request alone: not on which requests shared a batch, the
batch's size, the order requests arrived in, or how many generate() calls came before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from shaping.config import Config
from shaping.inference import ChatRequest
from shaping.inference.hf import HFBackend
from shaping.inference.types import request_seed
from shaping.pipeline import Pipeline, TrainingSample, model_request

SAMPLED = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 16}
TOPICS = ["the river", "bread", "seeds", "trains", "the bridge", "spring rain", "the kitchen", "soil"]


def keyed(n: int) -> list[ChatRequest]:
    return [
        ChatRequest([{"role": "user", "content": f"About {TOPICS[i % len(TOPICS)]}?"}], dict(SAMPLED), key=f"k{i}")
        for i in range(n)
    ]


def texts(backend: HFBackend, requests: list[ChatRequest]) -> dict[str | None, str | None]:
    return {r.key: reply.text for r, reply in zip(requests, backend.generate(requests), strict=True)}


def test_request_seed_is_a_pure_function_of_seed_and_key() -> None:
    assert request_seed(0, "abc") == request_seed(0, "abc")
    assert len({request_seed(0, "abc"), request_seed(1, "abc"), request_seed(0, "abd")}) == 3
    assert 0 <= request_seed(7, "x") < 2**63


def test_a_keyed_reply_is_the_same_in_any_batch(tiny_model_dir: Path) -> None:
    requests = keyed(8)
    together = texts(HFBackend(str(tiny_model_dir), batch_size=8, seed=3), requests)
    backend = HFBackend(str(tiny_model_dir), batch_size=3, seed=3)
    backend.generate(keyed(2))  # calls made before change nothing
    reordered = texts(backend, requests[::-1])
    alone = {r.key: texts(backend, [r])[r.key] for r in requests[:3]}
    assert reordered == together
    assert alone == {k: together[k] for k in alone}
    # sampling, not greedy search: 8 prompts of 4 repeated topics give more than 4 replies, and the
    # backend's seed changes them
    assert len(set(together.values())) > 4
    other_seed = texts(HFBackend(str(tiny_model_dir), batch_size=8, seed=4), requests)
    assert sum(other_seed[k] != together[k] for k in together) >= 4


class Sampled(Pipeline):
    """Twelve records, each asking the teacher for two samples of the same prompt and one of its own."""

    name = "sampled"
    teacher = Pipeline.model_dep("teacher")

    def run(self) -> list[TrainingSample]:
        return self.run_task(self.task, records=[{"id": str(i)} for i in range(12)])

    def task(self, record: dict[str, Any]) -> Any:
        shared = [{"role": "user", "content": "Who are you?"}]
        own = [{"role": "user", "content": f"Tell me about {TOPICS[int(record['id']) % len(TOPICS)]}."}]
        replies = yield [model_request(shared, model=self.teacher, **SAMPLED) for _ in range(2)] + [
            model_request(own, model=self.teacher, **SAMPLED)
        ]
        reply = " | ".join(r.get_text() for r in replies)
        return TrainingSample(id=record["id"], messages=[*own, {"role": "assistant", "content": reply}])


def test_a_pipeline_synthesizes_the_same_rows_whatever_its_batches(cfg: Config, tmp_path: Path) -> None:
    """The same records through batches of 12 and of 5, each run with a fresh response cache (so every
    request is generated again), the model's files rewritten in between (as a rebuild of the base
    does: new mtimes, so a new model id in the cache): byte-identical rows."""
    model = tmp_path / "model"
    shutil.copytree(cfg.models["teacher"].model, model)
    cfg.models["teacher"].model = str(model)
    cfg.models["teacher"].sysprompt_file = None
    rows = []
    for run, batch in enumerate((12, 5)):
        if run:
            for file in model.iterdir():
                os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
        cfg.models["teacher"].max_concurrency = batch
        cfg.synth.cache_dir = str(tmp_path / f"cache{run}")
        Sampled(cfg, output_dir=tmp_path / str(run)).execute()
        rows.append([json.loads(line)["messages"] for line in (tmp_path / str(run) / "samples.jsonl").open()])
    assert rows[0] == rows[1]
    first_two = [row[-1]["content"].split(" | ")[:2] for row in rows[0]]
    assert any(a != b for a, b in first_two)  # a record's two samples of one prompt are two draws
