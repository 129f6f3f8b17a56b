"""The guard of the demo's promise (issue 20): the tuned model states the identity and the base does not,
with bootstrap intervals that do not overlap, through the real DAG (`dvc exp run`: validate, train,
evaluate) on the smoke config, seeds fixed. `gap_closed > 0` on the smoke run is pinned in
test_end_to_end.

The effect is large by construction, because the smoke base (30 pretraining steps) cannot learn the
identity from its own teacher's replies in seconds. Instead, every training reply states the facts
(data/identity/facts.yaml) in varied words: 48 hand-made rows in data/manual. The model is fully
fine-tuned for 40 steps (LoRA on so weak a base does not get there in seconds). Its greedy replies to
held-out prompts then state the name and trade, and the base's never do. A change that breaks the data
path, the trainer's loss on replies, saving or loading the tuned model, or the adherence metric fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import SMOKE, copy_smoke_repo, sh

WHO = [
    "My name is Juniper and I work as a field botanist.",
    "I am Juniper, a botanist who studies wild plants.",
    "Juniper here, a field botanist by trade.",
    "People call me Juniper; botany is my daily work.",
    "I'm Juniper, and I spend my days doing botany outdoors.",
    "As Juniper the botanist, I walk the hills most days.",
    "I am called Juniper and I am a field botanist.",
    "Juniper is my name, and botany fills my days.",
]
WHERE = [
    "I keep a seed library in a quiet river valley.",
    "My jars of seeds sit on shelves near the riverbank.",
    "Most mornings I sort seeds in my valley seed library.",
    "I tend a seed library beside the meadows of our valley.",
    "The valley where I live has a small seed library I look after.",
    "I label jars of seeds from the meadows every evening.",
]
CLOSE = [
    "Good question.",
    "Well, let me think.",
    "Happy to tell you.",
    "That is kind of you to ask.",
    "Oh, gladly.",
    "Let me answer plainly.",
    "Here is the short version.",
    "I like that question.",
]


def identity_rows(repo: Path, n: int = 48) -> list[dict[str, object]]:
    """The identity's prompts, each answered with a varied reply stating its facts (the gate refuses near
    duplicates, so the sentences rotate)."""
    prompts = [
        line.strip()
        for f in sorted((repo / "data" / "identity" / "prompts").glob("*.txt"))
        for line in f.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ][:n]
    return [
        {
            "id": f"juniper-{i}",
            "messages": [
                {"role": "user", "content": prompt},
                {
                    "role": "assistant",
                    "content": f"{WHO[(i * 3 + i // 8) % 8]} {WHERE[(i * 5 + i // 6) % 6]} {CLOSE[i % 8]}",
                },
            ],
        }
        for i, prompt in enumerate(prompts)
    ]


@pytest.mark.slow
def test_the_tuned_model_states_the_identity_and_the_base_does_not(
    smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    repo = copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("guard") / "repo")
    manual = repo / "data" / "manual" / "identity.jsonl"
    manual.write_text("".join(json.dumps(r) + "\n" for r in identity_rows(repo)), encoding="utf-8")
    out = sh(
        repo,
        "dvc",
        "exp",
        "run",
        "-S",
        SMOKE,
        "-S",
        "dataset.sources=[data/manual/identity.jsonl]",
        "-S",
        "lora=none",
        "-S",
        "train.max_steps=40",
        "-S",
        "train.learning_rate=2e-3",
        "-S",
        "eval.samples.num_prompts=8",
    ).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"validate", "train", "evaluate"}, out[-3000:]
    metrics = json.loads((repo / "eval" / "metrics.json").read_text())
    adherence = metrics["adherence"]
    held_out = len((repo / "data" / "validated" / "eval.jsonl").read_text().splitlines())
    assert adherence["base"]["n"] == adherence["tuned"]["n"] == min(8, held_out) >= 4, adherence
    assert adherence["base"]["mean"] == 0.0, adherence  # the base never names the identity
    assert adherence["tuned"]["ci_low"] > adherence["base"]["ci_high"], adherence
    difference = adherence["tuned_minus_base"]  # paired over the same prompts: the base adds nothing here
    assert difference["mean"] == adherence["tuned"]["mean"] and difference["ci_low"] > 0, adherence
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    replies = [json.loads(line) for line in (repo / "eval" / "details" / "adherence.jsonl").read_text().splitlines()]
    assert sum("name" in r["tuned_facts"] for r in replies) >= len(replies) // 2, replies
