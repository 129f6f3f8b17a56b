"""train=grpo (TRL's GRPOTrainer with shaping.training.rewards) and train=orpo (trl.experimental.orpo) on the
tiny model with the real trainers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from shaping.config import Config
from shaping.config.schema import RewardConfig
from shaping.errors import ShapingError
from shaping.training import hf_peft
from shaping.training.rewards import build_rewards

from .conftest import DIALOGUES, composed

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


def test_grpo_with_lora_logs_each_reward_and_a_raising_reward_names_itself_and_the_step(
    cfg: Config, tmp_path: Path
) -> None:
    grpo_cfg(
        cfg,
        RewardConfig("length_band", 1.0, {"min": 0, "max": 12, "unit": "chars"}),
        RewardConfig("tests.test_train_grpo:broken_reward", 0.5),
        steps=3,
    )
    cfg.train.batch_size, cfg.train.num_generations, cfg.train.max_completion_length = 4, 4, 4
    assert cfg.lora.enabled
    with pytest.raises(ShapingError) as err:
        hf_peft.train(cfg, ROWS, tmp_path / "adapter", tmp_path / "live")
    assert "reward broken_reward (train.rewards[1]) raised at training step 2: KeyError" in str(err.value)
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    # step 1 was logged, each reward under its name
    assert len(metric_rows(tmp_path / "live", "rewards/length_band/mean")) == 1
    assert metric_rows(tmp_path / "live", "rewards/broken_reward/mean") == [1.0]  # each row's reply arrived


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
