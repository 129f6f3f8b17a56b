"""train=grpo (TRL's GRPOTrainer with shaping.training.rewards) and train=orpo (trl.experimental.orpo) on the
tiny model with the real trainers."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from aiohttp import web

from shaping.config import Config
from shaping.config.schema import CriterionConfig, IdentitySource, RewardConfig, RubricConfig
from shaping.errors import ShapingError
from shaping.hub import load_tokenizer
from shaping.inference.cache import complete_cached
from shaping.training import hf_peft
from shaping.training.rewards import AsyncNamedReward, build_rewards

from .conftest import DIALOGUES, composed
from .test_openai_backend import Endpoint

ROWS = [{"id": str(n), "messages": d} for n, d in enumerate(DIALOGUES)]


def metric_rows(live: Path, name: str) -> list[float]:
    lines = (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    assert lines[0].startswith("step\t")
    return [float(line.split("\t")[1]) for line in lines[1:]]


def grpo_cfg(cfg: Config, *rewards: RewardConfig, steps: int) -> Config:
    cfg.train = composed("train=grpo", "+experiment=smoke").train  # conf/train/grpo.yaml as the stage gets it
    t = cfg.train
    t.rewards = list(rewards)
    t.max_steps, t.batch_size, t.num_generations, t.max_completion_length = steps, 8, 8, 6
    t.warmup_ratio, t.lr_scheduler, t.precision = 0.0, "constant", "fp32"
    return cfg


@pytest.fixture(scope="module")
def eos_leaning_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the output embedding of its end-of-sequence token moved towards the mean hidden
    state of the prompts: it ends a reply with probability ~0.1 per token instead of ~1/320, so GRPO's groups
    hold replies that stop early and replies that do not from the first step (the eos reward has variance)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = False  # move the output row only, not the input embedding
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    prompts = [tokenizer.apply_chat_template(d[:-1], add_generation_prompt=True, return_dict=False) for d in DIALOGUES]
    with torch.no_grad():
        hidden = torch.cat([model(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0] for p in prompts])
        mean = hidden.mean(0)
        model.lm_head.weight[tokenizer.eos_token_id] += 3.0 * mean / mean.norm() ** 2
    out = tmp_path_factory.mktemp("eos-leaning")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow  # ~25 s on 2 cores: 20 GRPO steps of 8 sampled replies
def test_grpo_eos_reward_rises_and_each_step_reaches_dvclive(
    cfg: Config, eos_leaning_model_dir: Path, tmp_path: Path
) -> None:
    cfg.model.name_or_path = str(eos_leaning_model_dir)
    cfg.lora = composed("lora=none").lora  # a LoRA's first Adam steps move every B at full lr: too noisy at 20 steps
    grpo_cfg(cfg, RewardConfig("eos", 1.0, {"within": 3}), steps=20)
    cfg.train.learning_rate = 1e-2
    report = hf_peft.train(cfg, ROWS, tmp_path / "adapter", tmp_path / "live")
    curve = metric_rows(tmp_path / "live", "rewards/eos/mean")
    assert len(curve) == 20  # one point per step (logging_steps=1 in conf/train/grpo.yaml)
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last - first >= 0.3 and last >= 0.6, curve  # seed 0: ~0.2 -> ~0.8
    assert report.metrics["reward_eos"] == pytest.approx(curve[-1], abs=1e-6)
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["reward_eos"] == report.metrics["reward_eos"]


def broken_reward(completions: list[Any], trainer_state: Any, reference: list[str], **_: Any) -> list[float]:
    """1.0 for each reply whose row's own reply (the `reference` column) arrived; raises at step 2."""
    if trainer_state.global_step >= 1:
        raise KeyError("no such field")
    replies = {d[-1]["content"] for d in DIALOGUES}
    return [float(r in replies) for r in reference]


class ScriptedJudge(Endpoint):
    """An OpenAI-compatible judge on 127.0.0.1 that scores the reply it is shown by its length: a reply of
    at most 5 characters gets 5 and 4 on the test rubric ((4.5 - 1) / 4 = 0.875 once scaled), a longer one
    a prose answer with no score (unparseable: 0), a reply saying "cold" 1 and 1 (0.0, parsed)."""

    SHOWN = re.compile(r"<reply>\n(.*)\n</reply>", re.DOTALL)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests += 1
        found = self.SHOWN.search(body["messages"][-1]["content"])
        reply = found.group(1) if found else ""
        if reply == "cold":
            text = "<voice>1</voice> <clarity>1</clarity>"
        elif len(reply) <= 5:
            text = '<assessment><criterion name="voice"><score>5</score></criterion><clarity>4</clarity></assessment>'
        else:
            text = "A fine reply, I would say."
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return web.json_response({"id": "j", "object": "chat.completion", "model": body["model"], "choices": [choice]})


JUDGE_RUBRIC = RubricConfig(
    criteria=[CriterionConfig("voice", "warm"), CriterionConfig("clarity")], scale=[1, 5], instructions="Judge it."
)


def use_scripted_judge(cfg: Config, url: str, cache_dir: Path) -> None:
    assert cfg.train.judge is not None
    cfg.train.judge.rubric, cfg.train.reward_cache_dir = JUDGE_RUBRIC, str(cache_dir)
    judge = cfg.models["judge"]
    judge.backend, judge.base_url, judge.model, judge.max_retries = "openai", url, "scripted-judge", 0


def test_grpo_with_lora_logs_each_reward_and_a_raising_reward_names_itself_and_the_step(
    cfg: Config, tmp_path: Path
) -> None:
    grpo_cfg(
        cfg,
        RewardConfig("length_band", 1.0, {"min": 0, "max": 5, "unit": "chars"}),  # the judge's 'short' too
        RewardConfig("tests.test_train_grpo:broken_reward", 0.5),
        RewardConfig("judge", 0.5),
        RewardConfig("identity_agreement", 0.5),  # the tiny model as hf teacher, batched on TRL's event loop
        steps=3,
    )
    cfg.train.batch_size, cfg.train.num_generations, cfg.train.max_completion_length = 4, 4, 4
    assert cfg.train.identity is not None
    cfg.train.identity.max_new_tokens = 8
    assert cfg.lora.enabled
    with ScriptedJudge() as url, pytest.raises(ShapingError) as err:
        use_scripted_judge(cfg, url, tmp_path / "cache")
        hf_peft.train(cfg, ROWS, tmp_path / "adapter", tmp_path / "live")
    assert "reward broken_reward (train.rewards[1]) raised at training step 2: KeyError" in str(err.value)
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    # step 1 was logged, each reward under its name
    [short] = metric_rows(tmp_path / "live", "rewards/length_band/mean")
    assert metric_rows(tmp_path / "live", "rewards/broken_reward/mean") == [1.0]  # each row's reply arrived
    # TRL awaited the (asynchronous) judge on its event loop: the short replies scored 0.875, the others were
    # unparseable, scored 0 and counted (seed 0: 2 of the 4 replies are short)
    assert metric_rows(tmp_path / "live", "rewards/judge/mean") == [pytest.approx(0.875 * short)]
    assert metric_rows(tmp_path / "live", "rewards/judge/unparseable") == [pytest.approx(1 - short)]
    [agreement] = metric_rows(tmp_path / "live", "rewards/identity_agreement/mean")
    assert 0 < agreement < 1 and metric_rows(tmp_path / "live", "rewards/identity_agreement/unparseable") == [0.0]


def test_judge_reward_is_batched_cached_and_counts_what_it_cannot_read(
    cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg.train = composed("train=grpo").train
    prompts = [DIALOGUES[1][:-1]] * 4
    replies = ["Salt.", "Salt.", "cold", "Flour, water, salt and yeast."]  # a group of 4, two the same
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    logged: list[tuple[str, float]] = []
    kwargs = {"trainer_state": SimpleNamespace(global_step=6), "log_metric": lambda *m: logged.append(m)}
    with ScriptedJudge() as url:
        use_scripted_judge(cfg, url, tmp_path / "cache")
        [reward], _ = build_rewards([RewardConfig("judge")], cfg=cfg)
        assert isinstance(reward, AsyncNamedReward) and asyncio.iscoroutinefunction(reward.__call__)
        with caplog.at_level(logging.WARNING, logger="shaping.training.rewards"):
            scores = asyncio.run(reward(prompts=prompts, completions=completions, completion_ids=[], **kwargs))
        assert scores == [0.875, 0.875, 0.0, 0.0]
        assert Endpoint.last is not None and Endpoint.last.requests == 3  # the same reply was asked once
        # another reward object (a rerun, a resumed run) finds every answer in train.reward_cache_dir
        [again], _ = build_rewards([RewardConfig("judge")], cfg=cfg)
        assert asyncio.run(again(prompts=prompts, completions=completions, completion_ids=[])) == scores
        assert Endpoint.last.requests == 3
    assert (tmp_path / "cache" / "judge.sqlite").is_file()
    assert logged == [("rewards/judge/unparseable", 0.25)]
    assert "reward judge at training step 7: 1 of 4 answers of models.judge scored 0" in caplog.text
    assert 'no <criterion name="voice"> or <voice> tag' in caplog.text
    with Endpoint(status=500) as url:  # the judge is down: training stops, naming the reward and the step
        use_scripted_judge(cfg, url, tmp_path / "cache")
        [reward], _ = build_rewards([RewardConfig("judge")], where="train.rewards", cfg=cfg)
        with pytest.raises(
            ShapingError,
            match=r"reward judge \(train\.rewards\[0\]\) raised at training step 7: "
            r"ShapingError: all 1 requests to models\.judge \(train\.judge\.model\) failed",
        ):
            asyncio.run(reward(prompts=prompts[:1], completions=[[{"role": "assistant", "content": "new"}]], **kwargs))


def test_identity_agreement_reward_compares_with_the_hf_teachers_reply(cfg: Config, tmp_path: Path) -> None:
    """The teacher (the tiny model with the identity prompt, through the hf backend) answers each prompt
    once; a reply identical to its answer scores 1, a blank reply 0, another reply less."""
    cfg.train = composed("train=grpo").train
    assert cfg.train.identity is not None
    cfg.train.identity.max_new_tokens, cfg.train.reward_cache_dir = 8, str(tmp_path / "cache")
    [reward], _ = build_rewards([RewardConfig("identity_agreement")], cfg=cfg)
    teacher = reward.fn
    prompts = [DIALOGUES[1][:-1], DIALOGUES[2][:-1]]
    answers = asyncio.run(complete_cached(teacher.registry, "teacher", prompts, teacher.options, teacher.cache()))
    said = [a.text or "" for a in answers]
    assert all(s.strip() for s in said), said
    replies = [said[0], "", "Seeds wait in the dark soil until the spring rain comes.", said[1]]
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    scores = asyncio.run(reward(prompts=[prompts[0]] * 3 + [prompts[1]], completions=completions))
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[3] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] == 0.0 and 0.0 <= scores[2] < 0.9
    assert teacher.registry.async_backend("teacher").calls == 1  # the reward's requests were all in the cache
    # source=reference: the row's own reply; a threshold makes it 1 or 0
    cfg.train.identity.source, cfg.train.identity.similarity_threshold = IdentitySource.reference, 0.99
    [reward], _ = build_rewards([RewardConfig("identity_agreement")], cfg=cfg)
    got = asyncio.run(reward(prompts=prompts, completions=completions[:2], reference=[said[0], said[0]]))
    assert got == [1.0, 0.0]


def test_model_reward_config_errors_name_the_key(cfg: Config, tmp_path: Path) -> None:
    cfg.train = composed("train=grpo").train
    judge, identity = cfg.train.judge, cfg.train.identity
    assert judge is not None and identity is not None

    def refused(reward: str, message: str, args: dict[str, Any] | None = None) -> None:
        with pytest.raises(ShapingError, match=message):
            build_rewards([RewardConfig(reward, 1.0, args or {})], cfg=cfg)

    refused("judge", r"train\.rewards\[0\]\.args\.model: unknown argument; it takes none", {"model": "x"})
    judge.model = "jugde"
    refused("judge", r"train\.judge\.model='jugde': not in the model registry")
    judge.model, judge.rubric.scale = "judge", [5, 1]
    refused("judge", r"train\.judge\.rubric\.scale=\[5, 1\]: must be \[lowest, highest\]")
    identity.teacher = "nobody"
    refused("identity_agreement", r"train\.identity\.teacher='nobody': not in the model registry")
    identity.teacher, prompt_file = "teacher", cfg.models["teacher"].sysprompt_file
    cfg.models["teacher"].sysprompt_file = "nowhere.md"
    refused("identity_agreement", r"models\.teacher\.sysprompt_file: nowhere\.md not found")
    cfg.models["teacher"].sysprompt_file, identity.embedding_model = prompt_file, "nowhere"
    refused("identity_agreement", r"train\.identity\.embedding_model=nowhere: not a folder")
    cfg.train = composed().train  # train=sft: no judge section
    refused("judge", r"train\.judge: null; the judge reward reads its model and rubric there")
    with pytest.raises(ShapingError, match=r"train\.rewards\[0\]\.name='judge': this reward needs the whole config"):
        build_rewards([RewardConfig("judge")])


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        ([], r"train\.rewards: empty"),
        ([RewardConfig("lenght_band")], r"train\.rewards\[0\]\.name='lenght_band': unknown reward; choose one of"),
        (
            [RewardConfig("eos", 1.0, {"whithin": 3})],
            r"train\.rewards\[0\]\.args\.whithin: unknown argument; it takes within",
        ),
        ([RewardConfig("eos")], r"train\.rewards\[0\]\.args: .*within"),
        (
            [RewardConfig("length_band", 1.0, {"min": 9, "max": 3})],
            r"train\.rewards\[0\]\.args \(length_band\): min=9, max=3",
        ),
        (
            [RewardConfig("length_band", 1.0, {"min": 1, "max": 3, "unit": "words"})],
            r"train\.rewards\[0\]\.args \(length_band\): unit='words'",
        ),
        (
            [RewardConfig("nope.nowhere:f")],
            r"train\.rewards\[0\]\.name='nope\.nowhere:f': cannot import module 'nope\.nowhere'",
        ),
        ([RewardConfig("tests.test_train_grpo:missing")], r"train\.rewards\[0\]\.name=.*has no 'missing'"),
        (
            [RewardConfig("think_tags"), RewardConfig("think_tags")],
            r"train\.rewards\[1\]\.name='think_tags': the same reward as train\.rewards\[0\]",
        ),
    ],
)
def test_reward_config_errors_name_the_key(rewards: list[RewardConfig], message: str) -> None:
    with pytest.raises(ShapingError, match=message):
        build_rewards(rewards, eos_token_ids=[2])


def test_grpo_options_errors_name_the_key(cfg: Config) -> None:
    grpo_cfg(cfg, RewardConfig("think_tags"), steps=1)
    cfg.train.batch_size, cfg.train.num_generations = 6, 4
    with pytest.raises(ShapingError, match=r"train\.batch_size=6 x .*multiple of train\.num_generations=4"):
        hf_peft.check_options(cfg)
    cfg.train.batch_size, cfg.train.rewards = 8, []
    with pytest.raises(ShapingError, match=r"train\.rewards: empty"):
        hf_peft.check_options(cfg)
    cfg.train.rewards = [RewardConfig("think_tags"), RewardConfig("eos", 1.0, {"within": 0})]
    with pytest.raises(ShapingError, match=r"train\.rewards\[1\]\.args \(eos\): within=0"):
        hf_peft.check_options(cfg)  # the rewards are checked before any model loads
    with pytest.raises(ShapingError, match=r"train\.vllm=true: vLLM generation needs a CUDA GPU"):
        hf_peft.check_vllm("cpu")


def test_registry_rewards_score_replies() -> None:
    rewards, weights = build_rewards(
        [
            RewardConfig("length_band", 2.0, {"min": 2, "max": 3}),
            RewardConfig("eos", 1.0, {"within": 3}),
            RewardConfig("think_tags", 0.5, {"required": True}),
        ],
        eos_token_ids=[2],
    )
    assert [r.__name__ for r in rewards] == ["length_band", "eos", "think_tags"] and weights == [2.0, 1.0, 0.5]
    completions = [[{"role": "assistant", "content": c}] for c in ("<think>x</think>hi", "<think>x", "hi")]
    ids = [[5, 2], [5, 6, 7, 2], [5, 6, 7]]
    kwargs = {"prompts": [[]] * 3, "completions": completions, "completion_ids": ids}
    assert [r(**kwargs) for r in rewards] == [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_orpo_trains_and_logs_its_log_odds(cfg: Config, tmp_path: Path) -> None:
    cfg.train = composed("train=orpo", "+experiment=smoke").train
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.logging_steps, cfg.train.precision = 3, 2, 1, "fp32"
    rows = [{**row, "rejected": "I do not know."} for row in ROWS] * 2
    report = hf_peft.train(cfg, rows, tmp_path / "adapter", tmp_path / "live")
    assert report.metrics["method"] == "orpo" and report.metrics["steps"] == 3
    assert math.isfinite(report.metrics["train_loss"])
    assert {"log_odds_ratio", "log_odds_chosen", "nll_loss", "reward_margin"} <= set(report.metrics)
    logged = metric_rows(tmp_path / "live", "log_odds_ratio")
    assert len(logged) == 3 and all(math.isfinite(v) and v < 0 for v in logged)  # log sigmoid(.) < 0
    assert report.metrics["log_odds_ratio"] == pytest.approx(logged[-1], abs=1e-6)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # the tokens it read: 6 pairs (3 steps of 2), each its chosen and its rejected sequence, prompt included
    tokenizer = load_tokenizer(cfg.model)

    def length(row: dict[str, Any], reply: str) -> int:
        messages = [*row["messages"][:-1], {"role": "assistant", "content": reply}]
        return len(
            tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        )

    pairs = [length(r, r["messages"][-1]["content"]) + length(r, r["rejected"]) for r in rows]
    assert 6 * (min(pairs) - 4) <= report.metrics["tokens"] <= 6 * (max(pairs) + 4), (report.metrics["tokens"], pairs)


def test_sampling_knobs_are_checked_before_training_naming_each_key(cfg: Config) -> None:
    """GRPO and on-policy distillation sample replies: a temperature of 0 or no reply length stops
    them before any model loads, one error naming every bad key (shaping.training.knobs)."""
    from shaping.training.knobs import check_sampling_knobs

    cfg.train = composed("train=grpo", "+experiment=smoke").train
    cfg.train.temperature, cfg.train.max_completion_length = 0.0, 0
    both = r"train=grpo samples its replies while it trains: train\.temperature=0\.0 .*; train\.max_completion_length=0"
    with pytest.raises(ShapingError, match=both):
        hf_peft.check_options(cfg)
    cfg.train.temperature, cfg.train.max_completion_length, cfg.train.num_generations = 0.7, 8, 0
    with pytest.raises(ShapingError, match=r"train=distill .*: train\.num_generations=0 \(at least 1\)$"):
        check_sampling_knobs(cfg.train, "train=distill", min_generations=1)
    check_sampling_knobs(cfg.train, "train=distill")  # the local distill samples one reply a prompt: no minimum
