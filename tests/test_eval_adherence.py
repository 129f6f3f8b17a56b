"""`adherence` (the share of replies that state the identity's facts), `gap_closed`, and the summary
`make demo` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.evaluation import EvalContext, run_metrics
from shaping.evaluation.metrics.adherence import load_facts, stated
from shaping.evaluation.metrics.loss import gap_closed

from .conftest import DIALOGUES, REPO

FACTS = """facts:
  name: [Juniper]
  seed library: [seed library, seeds]
  river: [river, riverbank]
"""


def facts_file(tmp_path: Path, text: str = FACTS) -> Path:
    path = tmp_path / "facts.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_fact_is_stated_by_one_of_its_phrases_as_whole_words(tmp_path: Path) -> None:
    facts = load_facts(facts_file(tmp_path))
    assert stated("I'm JUNIPER, and I keep a Seed Library by the river.", facts) == ["name", "seed library", "river"]
    assert stated("Junipers and seedlings grow by the riverbanks.", facts) == []  # whole words only
    assert stated("Seeds, then the riverbank.", facts) == ["seed library", "river"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("facts: [a, b]", "needs a `facts:` mapping"),
        ("facts:\n  name: []", "facts.name must be a non-empty list"),
        ("facts:\n  name: [Juniper, 3]", "facts.name must be a non-empty list"),
        ("facts: {name: [Juniper]", "not valid YAML"),
    ],
)
def test_a_bad_facts_file_is_one_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = facts_file(tmp_path, text)
    with pytest.raises(ShapingError, match=message) as err:
        load_facts(path)
    assert str(path) in str(err.value)
    with pytest.raises(ShapingError, match=r"eval\.adherence\.facts_file: .*missing\.yaml not found"):
        load_facts(tmp_path / "missing.yaml")


def test_the_demo_facts_file_loads() -> None:
    assert len(load_facts(REPO / "data" / "identity" / "facts.yaml")) >= 3


def test_gap_closed_is_the_share_of_the_base_to_teacher_gap() -> None:
    assert gap_closed(2.0, 1.0, 1.25) == 0.75
    assert gap_closed(2.0, 1.0, 2.5) == -0.5  # worse than the base
    assert gap_closed(2.0, 2.0, 1.0) is None and gap_closed(1.0, 2.0, 1.0) is None  # no gap to close


def test_adherence_counts_each_models_replies_and_writes_them(cfg: Config, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    cfg.eval.adherence.facts_file = str(facts_file(tmp_path))
    cfg.eval.samples.num_prompts = 4
    rows = [{"id": str(i), "messages": DIALOGUES[i % 3]} for i in range(4)]
    ctx = EvalContext(cfg, tokenizer, rows, model, None, "You are Juniper.", tmp_path / "eval")
    said = {
        "base": ["Bread rises.", "Trains stop.", "Hello.", "By the river."],
        "teacher": ["Juniper here.", "Seeds!", "Juniper, by the river.", "I keep a seed library."],
        "tuned": ["Juniper here.", "Trains stop.", "Seeds by the river.", "Hello."],
    }
    for name, texts in said.items():  # the replies metrics share, as generated once
        ctx._replies[name] = [{"text": t, "finish_reason": "stop", "tokens": 3} for t in texts]
    cfg.eval.adherence.min_facts = 1
    result = run_metrics(ctx, ["adherence"])["adherence"]
    assert [result[m]["mean"] for m in ("base", "teacher", "tuned")] == [0.25, 1.0, 0.5]
    assert [result[m]["facts_per_reply"] for m in ("base", "teacher", "tuned")] == [0.25, 1.25, 0.75]
    assert result["tuned"]["ci_low"] <= 0.5 <= result["tuned"]["ci_high"] and result["tuned"]["n"] == 4
    assert result["teacher"]["ci_low"] == 1.0  # every reply adheres: no spread
    # tuned - base per prompt: 1-0, 0-0, 1-0, 0-1 (base's "By the river." states the river, tuned's
    # "Hello." nothing): over 4 prompts the interval holds 0, the difference is not clear
    difference = result["tuned_minus_base"]
    assert difference["mean"] == 0.25 and difference["n"] == 4
    assert -1.0 <= difference["ci_low"] < 0.0 and 0.25 < difference["ci_high"] <= 1.0
    assert result["facts"] == 3 and result["min_facts"] == 1
    records = [json.loads(line) for line in (tmp_path / "eval" / "details" / "adherence.jsonl").open()]
    assert records[2]["teacher_facts"] == ["name", "river"] and records[2]["tuned_facts"] == ["seed library", "river"]
    cfg.eval.adherence.min_facts = 2
    assert [run_metrics(ctx, ["adherence"])["adherence"][m]["mean"] for m in ("base", "teacher", "tuned")] == [
        0.0,
        0.25,
        0.25,
    ]


def test_summary_prints_losses_gap_adherence_and_replies_side_by_side(tmp_path: Path) -> None:
    import runpy

    metrics = {
        "base": {"loss": 1.8},
        "teacher": {"loss": 1.6},
        "tuned": {"loss": 1.65},
        "gap_closed": 0.75,
        "adherence": {
            "base": {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 8},
            "teacher": {"mean": 0.875, "ci_low": 0.625, "ci_high": 1.0, "n": 8},
            "tuned": {"mean": 0.5, "ci_low": 0.125, "ci_high": 0.875, "n": 8},
            "tuned_minus_base": {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.875, "n": 8},
            "facts": 5,
            "min_facts": 1,
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    samples = [{"prompt": f"Question {i}?", "base": f"base reply {i}", "tuned": f"tuned reply {i}"} for i in range(3)]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples))
    module = runpy.run_path(str(REPO / "src" / "summary.py"))
    text = module["summary"](metrics, samples, 2)
    assert "gap closed by tuning: 0.75" in text
    assert "teacher  0.88 [0.62, 1.00] over 8 prompts" in text
    assert "tuned - base 0.50 [0.25, 0.88] (paired" in text
    assert "> Question 1?" in text and "> Question 2?" not in text
    lines = text.splitlines()
    assert any(line.strip().startswith("base reply 0") and line.endswith("| tuned reply 0") for line in lines)
    assert module["main"](["--eval-dir", str(tmp_path)]) == 0
    assert module["main"](["--eval-dir", str(tmp_path / "none")]) == 1
