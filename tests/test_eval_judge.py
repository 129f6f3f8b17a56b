"""The `judge` metric end to end: the tiny model's generations judged through the model registry by
real servers on 127.0.0.1 (`python -m shaping.serve`, and a scripted aiohttp judge whose replies
parse) and by the local `hf` backend."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import torch
from aiohttp import web
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config import Config
from shaping.config.schema import CriterionConfig, RubricConfig
from shaping.errors import ShapingError
from shaping.evaluation import EvalContext, run_metrics
from shaping.evaluation.stats import mean_with_ci
from shaping.inference.rubric import check_rubric, rubric_messages
from shaping.serve import running_server

from .conftest import DIALOGUES, composed
from .test_openai_backend import Endpoint

# Short: prompt + reply must fit the tiny model's 256-token context when it is the judge.
RUBRIC = RubricConfig(
    instructions="Judge the reply.",
    criteria=[CriterionConfig(name="voice", description="warm"), CriterionConfig(name="clarity")],
    scale=[1, 5],
)


def conf_rubric(**changes: Any) -> RubricConfig:
    """conf/eval/default.yaml's rubric with `changes` applied."""
    return dataclasses.replace(composed().eval.judge.rubric, **changes)


def make_ctx(cfg: Config, out_dir: Path) -> EvalContext:
    """The tiny model as base, with a random LoRA adapter as tuned; the three DIALOGUES as held-out rows."""
    cfg.eval.samples.num_prompts = 3
    cfg.eval.samples.max_new_tokens = 8
    cfg.eval.judge.rubric = RUBRIC
    cfg.eval.judge.show_reference = False
    cfg.eval.judge.max_new_tokens = 16
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    tuned = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    rows = [{"id": f"r{i}", "messages": [m for m in d if m["role"] != "system"]} for i, d in enumerate(DIALOGUES)]
    return EvalContext(
        cfg=cfg,
        tokenizer=tokenizer,
        rows=rows,
        tuned=tuned,
        base=None,
        system_prompt="You are Juniper.",
        out_dir=out_dir,
    )


def judgements(out_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out_dir / "details" / "judge.jsonl").read_text().splitlines()]


class ScriptedJudge(Endpoint):
    """An OpenAI-compatible judge that answers by the conversation it is shown: both scores for the
    Juniper question, an out-of-scale clarity for the bread question, prose for the trains question."""

    REPLIES: ClassVar[dict[str, str]] = {
        "Who are you?": '<assessment><criterion name="voice"><score>5</score><reason>warm</reason></criterion>'
        '<criterion name="clarity"><score>4</score></criterion></assessment>',
        "What is bread made of?": "Sure! <voice>3</voice> <clarity>ten</clarity>",
        "How do trains stop?": "The reply is fine, I would give it a four.",
    }

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests += 1
        shown = body["messages"][-1]["content"]
        text = next(reply for question, reply in self.REPLIES.items() if f"user: {question}" in shown)
        return web.json_response(
            {
                "id": "j",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


def test_parseable_judge_gives_hand_computed_means_and_counts_unparseable(cfg: Config, tmp_path: Path) -> None:
    ctx = make_ctx(cfg, tmp_path)
    judge = cfg.models["judge"]
    with ScriptedJudge() as url:
        judge.backend, judge.base_url, judge.model = "openai", url, "scripted-judge"
        metrics = run_metrics(ctx, ["judge"])["judge"]
        assert ScriptedJudge.last is not None and ScriptedJudge.last.requests == 6  # 3 prompts x base, tuned
    # per model: voice read from two replies (5 and 3), clarity from one (4; "ten" is not on the scale);
    # two of three replies lack a score, so they are unparseable; the bootstrap interval of a
    # single score is that score, of {5, 3} within [3, 5]
    for model in ("base", "tuned"):
        got = metrics[model]
        assert (got["judged"], got["unparseable"], got["errors"]) == (3, 2, 0)
        assert got["voice"]["mean"] == 4.0 and got["voice"]["n"] == 2
        assert 3 <= got["voice"]["ci_low"] < 4 < got["voice"]["ci_high"] <= 5
        assert got["clarity"] == {"mean": 4.0, "ci_low": 4.0, "ci_high": 4.0, "n": 1}
    assert metrics["unparseable"] == 4
    records = judgements(tmp_path)
    assert len(records) == 6 and sum(r["parsed"] for r in records) == 2
    bread = next(r for r in records if r["id"] == "r1" and r["model"] == "tuned")
    assert bread["scores"] == {"voice": 3.0, "clarity": None}
    assert bread["problems"] == ["clarity: 'ten' is not a number from 1 to 5"]
    assert bread["reply"] == ctx.replies("tuned")[1]["text"]  # the generation that was judged


@pytest.fixture(scope="module")
def judge_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with room for a judge prompt: 1024 positions (rotary, so the weights are unchanged)."""
    out = tmp_path_factory.mktemp("judge-model")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    return out


@pytest.fixture(scope="module")
def served(judge_model_dir: Path) -> Iterator[str]:
    with running_server(judge_model_dir, args=["--device", "cpu"]) as url:
        yield url


@pytest.mark.parametrize("where", ["served", "local"])
def test_tiny_judge_replies_are_counted_unparseable(
    cfg: Config, tmp_path: Path, judge_model_dir: Path, served: str, where: str
) -> None:
    """A tiny random model as the judge, behind the project's own server or loaded locally: its
    replies are not XML, so every one is counted (none dropped) and no criterion gets a mean."""
    ctx = make_ctx(cfg, tmp_path)
    judge = cfg.models["judge"]
    judge.model = str(judge_model_dir)
    if where == "served":
        before = httpx.get(served.removesuffix("/v1") + "/health").json()["requests"]
        judge.backend, judge.base_url = "openai", served
        judge.model = httpx.get(f"{served}/models").json()["data"][0]["id"]
    metrics = run_metrics(ctx, ["judge"])["judge"]
    if where == "served":
        assert httpx.get(served.removesuffix("/v1") + "/health").json()["requests"] - before == 6
    assert metrics["unparseable"] == 6
    for model in ("base", "tuned"):
        assert (metrics[model]["judged"], metrics[model]["unparseable"], metrics[model]["errors"]) == (3, 3, 0)
        assert metrics[model]["voice"] == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    records = judgements(tmp_path)
    assert len(records) == 6 and all(isinstance(r["judge_reply"], str) and r["error"] is None for r in records)
    assert all(not r["parsed"] and r["problems"] for r in records)


def test_failed_judge_requests_are_counted_as_errors(cfg: Config, tmp_path: Path) -> None:
    ctx = make_ctx(cfg, tmp_path)
    judge = cfg.models["judge"]
    judge.backend, judge.base_url, judge.model, judge.max_retries = "openai", "http://127.0.0.1:9/v1", "nobody", 0
    metrics = run_metrics(ctx, ["judge"])["judge"]
    assert metrics["unparseable"] == 6 and metrics["tuned"]["errors"] == 3
    assert all(r["problems"][0].startswith("request failed: ") for r in judgements(tmp_path))


def test_failed_generations_are_counted_and_not_judged(cfg: Config, tmp_path: Path) -> None:
    """A tuned generation that failed (a sampling service's error: text None) is not sent to the judge;
    it counts in `failed`, in no mean, and its record in judge.jsonl says why."""
    ctx = make_ctx(cfg, tmp_path)
    ctx.replies("tuned")[1]["text"] = None  # the bread question's generation failed
    judge = cfg.models["judge"]
    with ScriptedJudge() as url:
        judge.backend, judge.base_url, judge.model = "openai", url, "scripted-judge"
        metrics = run_metrics(ctx, ["judge"])["judge"]
        assert ScriptedJudge.last is not None and ScriptedJudge.last.requests == 5  # not 6: nothing to judge
    tuned, base = metrics["tuned"], metrics["base"]
    assert (tuned["judged"], tuned["unparseable"], tuned["errors"], tuned["failed"]) == (2, 1, 0, 1)
    assert tuned["voice"] == {"mean": 5.0, "ci_low": 5.0, "ci_high": 5.0, "n": 1}  # the bread reply's 3 is gone
    assert (base["judged"], base["failed"]) == (3, 0) and base["voice"]["n"] == 2
    assert metrics["failed"] == 1 and metrics["unparseable"] == 3
    skipped = [r for r in judgements(tmp_path) if r.get("skipped")]
    assert skipped == [{"model": "tuned", "id": "r1", "reply": None, "skipped": "generation failed"}]


def test_judge_prompt_carries_rubric_scale_and_reply() -> None:
    system, user = rubric_messages(RUBRIC, DIALOGUES[1][:-1], "Flour.", reference="Flour and water.")
    assert system["content"].startswith("Judge the reply.")
    assert "- voice: warm\n- clarity\n" in system["content"] and "from 1 (worst) to 5 (best)" in system["content"]
    assert '<criterion name="clarity"><score>N</score>' in system["content"]
    assert "user: What is bread made of?" in user["content"] and "<reply>\nFlour.\n</reply>" in user["content"]
    assert "<reference>\nFlour and water.\n</reference>" in user["content"]


@pytest.mark.parametrize(
    ("rubric", "message"),
    [
        (conf_rubric(criteria=[]), r"eval\.judge\.rubric\.criteria: empty"),
        (conf_rubric(criteria=[CriterionConfig(name="1st")]), r"criteria\[0\]\.name='1st': must be usable"),
        (conf_rubric(criteria=[CriterionConfig(name="a"), CriterionConfig(name="A")]), "names repeat"),
        (conf_rubric(criteria=[CriterionConfig(name="a")], scale=[5, 1]), r"scale=\[5, 1\]: must be"),
    ],
)
def test_bad_rubrics_are_refused_naming_the_key(rubric: RubricConfig, message: str) -> None:
    with pytest.raises(ShapingError, match=message):
        check_rubric(rubric)


def test_bad_interval_settings_are_refused_before_any_request(cfg: Config, tmp_path: Path) -> None:
    ctx = make_ctx(cfg, tmp_path)
    cfg.eval.judge.confidence = 95
    with pytest.raises(ShapingError, match=r"eval\.judge\.confidence=95: must be between 0 and 1"):
        run_metrics(ctx, ["judge"])
    cfg.eval.judge.confidence, cfg.eval.judge.bootstrap_samples = 0.9, 0
    with pytest.raises(ShapingError, match=r"eval\.judge\.bootstrap_samples=0: must be at least 1"):
        run_metrics(ctx, ["judge"])


def test_unknown_judge_model_names_the_registry_key(cfg: Config, tmp_path: Path) -> None:
    ctx = make_ctx(cfg, tmp_path)
    cfg.eval.judge.model = "oracle"
    with pytest.raises(ShapingError, match=r"models\.oracle: not in the model registry"):
        run_metrics(ctx, ["judge"])


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    scores = [1.0, 2.0, 2.0, 3.0, 5.0, 4.0, 4.0, 3.0]
    first = mean_with_ci(scores, 0.95, 2000, seed=7)
    assert first == mean_with_ci(scores, 0.95, 2000, seed=7)
    assert first["mean"] == 3.0 and first["n"] == 8
    assert 1.0 <= first["ci_low"] < 3.0 < first["ci_high"] <= 5.0
    narrower = mean_with_ci(scores, 0.5, 2000, seed=7)
    assert first["ci_low"] < narrower["ci_low"] and narrower["ci_high"] < first["ci_high"]
    assert mean_with_ci([2.0, 2.0], seed=1) == {"mean": 2.0, "ci_low": 2.0, "ci_high": 2.0, "n": 2}
