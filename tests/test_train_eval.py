"""Evaluation while training (train.eval_steps, train.early_stopping_patience, train.keep_best): real TRL
trainers on the tiny model, a few steps each."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.training import hf_peft

from .conftest import DIALOGUES, REPO, composed

ROWS = [{"id": str(n), "messages": d, "rejected": "I do not know."} for n, d in enumerate(DIALOGUES)] * 2
EVAL_ROWS = [
    {
        "id": "e0",
        "messages": [
            {"role": "user", "content": "Who keeps the seed library?"},
            {"role": "assistant", "content": "I do: Juniper, by the river."},
        ],
        "rejected": "Nobody.",
    },
    {
        "id": "e1",
        "messages": [
            {"role": "user", "content": "What do you love?"},
            {"role": "assistant", "content": "Seeds, and bread in a warm kitchen."},
        ],
        "rejected": "Nothing much.",
    },
]


def repeating(word: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{word}{n}", "messages": [d[-2], {"role": "assistant", "content": " ".join([word] * 24)}]}
        for n, d in enumerate(DIALOGUES)
    ]


def curve(live: Path, name: str = "eval/loss") -> list[tuple[int, float]]:
    lines = (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["step", name.rsplit("/", 1)[-1]]
    return [(int(s), float(v)) for s, v in (line.split("\t")[:2] for line in lines[1:])]


def shrink(cfg: Config, **train: Any) -> None:
    t = cfg.train
    t.batch_size, t.logging_steps, t.precision, t.warmup_ratio = 2, 2, "fp32", 0.0
    for key, value in train.items():
        setattr(t, key, value)


def test_early_stopping_stops_after_patience_evaluations_on_a_plateau(cfg: Config, tmp_path: Path) -> None:
    # learning_rate 0: the weights never move, so every eval loss equals the first (exactly, on CPU): the
    # first evaluation sets the best, and the next `patience` evaluations fail to beat it
    shrink(cfg, max_steps=40, learning_rate=0.0, eval_steps=2, early_stopping_patience=2, save_steps=2)
    cfg.train.save_total_limit = 3  # checkpoints 2, 4 and 6 all stay
    checkpoints = tmp_path / "checkpoints"
    report = hf_peft.train(cfg, ROWS, tmp_path / "adapter", tmp_path / "live", checkpoints, eval_rows=EVAL_ROWS)
    points = curve(tmp_path / "live")
    assert [step for step, _ in points] == [2, 4, 6]  # one point per eval_steps, on the optimizer step
    assert len({loss for _, loss in points}) == 1
    assert report.metrics["steps"] == 6 and report.metrics["stopped_early"] is True
    assert report.metrics["evaluations"] == 3 and report.metrics["best_step"] == 2
    assert report.metrics["eval_loss"] == pytest.approx(points[-1][1], abs=1e-6)
    assert [step for step, _ in curve(tmp_path / "live", "loss")] == [2, 4, 6]  # logged at the same steps
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["eval_loss"] == report.metrics["eval_loss"]

    # killed after the checkpoint at step 4 (one evaluation without improvement so far): the re-run
    # continues that count and stops at step 6 too, not two evaluations after the resume
    shutil.rmtree(checkpoints / "checkpoint-6")
    again = hf_peft.train(cfg, ROWS, tmp_path / "adapter2", tmp_path / "live2", checkpoints, eval_rows=EVAL_ROWS)
    assert again.metrics["resumed_from_step"] == 4 and again.metrics["steps"] == 6
    assert curve(tmp_path / "live2") == points  # the checkpoint's evaluations replayed, then step 6's


def test_keep_best_saves_the_checkpoint_with_the_lowest_eval_loss(cfg: Config, tmp_path: Path) -> None:
    # the training replies repeat one word and the eval replies another to the same prompts: each step makes
    # the training word likelier and the eval word less likely, so the eval loss rises (about 0.2 per
    # evaluation here) and the best evaluation is an early one, not the last
    shrink(cfg, max_steps=6, learning_rate=0.01, lr_scheduler="constant", eval_steps=2, save_steps=2, keep_best=True)
    checkpoints = tmp_path / "checkpoints"
    report = hf_peft.train(cfg, repeating("seeds") * 2, tmp_path / "adapter", tmp_path / "live", checkpoints,
                           eval_rows=repeating("bread"))  # fmt: skip
    points = curve(tmp_path / "live")
    assert [step for step, _ in points] == [2, 4, 6]
    best_step = min(points, key=lambda p: p[1])[0]
    assert best_step < 6, f"the fixture must make the best evaluation an early one: {points}"
    assert report.metrics["kept_step"] == report.metrics["best_step"] == best_step
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    best = load_file(str(checkpoints / f"checkpoint-{best_step}" / "adapter_model.safetensors"))
    last = load_file(str(checkpoints / "checkpoint-6" / "adapter_model.safetensors"))  # kept beside the best
    assert saved.keys() == best.keys() and saved
    assert all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_preference_methods_evaluate_their_own_rows(cfg: Config, tmp_path: Path, method: str) -> None:
    cfg.train = composed(f"train={method}", "+experiment=smoke").train
    shrink(cfg, max_steps=2, eval_steps=1, logging_steps=1)
    report = hf_peft.train(cfg, ROWS, tmp_path / "adapter", tmp_path / "live", eval_rows=EVAL_ROWS)
    points = curve(tmp_path / "live")
    assert [step for step, _ in points] == [1, 2]
    assert report.metrics["evaluations"] == 2
    # the preference trainer's own eval metrics: its rewards on the eval pairs (built as its training rows)
    assert [step for step, _ in curve(tmp_path / "live", "eval/rewards/margins")] == [1, 2]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"eval_steps": -1}, r"train\.eval_steps=-1: must be 0 \(off\) or more"),
        ({"early_stopping_patience": 2}, r"train\.early_stopping_patience=2 .* set train\.eval_steps > 0"),
        ({"keep_best": True}, r"train\.keep_best=true .* train\.eval_steps=0 evaluates never"),
        ({"keep_best": True, "eval_steps": 10, "save_steps": 50}, r"set train\.save_steps=10 \(train\.eval_steps\)"),
    ],
)
def test_eval_knobs_without_what_they_need_fail_naming_the_keys(
    cfg: Config, changes: dict[str, object], message: str
) -> None:
    for key, value in changes.items():
        setattr(cfg.train, key, value)
    with pytest.raises(ShapingError, match=message):
        hf_peft.check_options(cfg)


def test_default_is_no_evaluation(cfg: Config) -> None:
    t = composed().train
    assert (t.eval_steps, t.early_stopping_patience, t.keep_best) == (0, 0, False)
    assert hf_peft.common_args(cfg, {}, "fp32", False, "cpu")["eval_strategy"] == "no"


def test_the_stage_reads_the_eval_split_only_when_evaluating(cfg: Config, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_stage", REPO / "src" / "train.py")
    assert spec and spec.loader
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    train_file = str(tmp_path / "train.jsonl")
    assert stage.read_eval_rows(cfg, train_file) is None  # eval_steps=0: eval.jsonl is not even looked for
    cfg.train.eval_steps = 5
    with pytest.raises(ShapingError, match=r"train\.eval_steps=5: .*eval\.jsonl is missing; run the validate stage"):
        stage.read_eval_rows(cfg, train_file)
    (tmp_path / "eval.jsonl").write_text(json.dumps(EVAL_ROWS[0]) + "\n")
    assert stage.read_eval_rows(cfg, train_file) == EVAL_ROWS[:1]
    cfg.backend.name = "tinker"
    cfg.train.eval_steps, cfg.train.keep_best = 0, True
    with pytest.raises(
        ShapingError, match=r"train\.keep_best=True: .*backend=hf_peft feature; set train\.keep_best=false"
    ):
        stage.read_eval_rows(cfg, train_file)
