"""prompt=gepa: DSPy's GEPA optimises the teacher's system prompt, with real DSPy against the project's
own server (`python -m shaping.serve` on 127.0.0.1) over the tiny model; and to_dspy_examples."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from shaping.config import Config
from shaping.config.schema import PromptMetric
from shaping.data.transforms import to_dspy_examples
from shaping.errors import ShapingError
from shaping.optimize import Endpoint, run_gepa
from shaping.optimize.gepa import extract_instruction, make_metric, reflection_prompt, write_outcome
from shaping.serve.launch import running_server

from .conftest import SMOKE, composed, copy_smoke_repo, sh

PROMPTS = [
    "Who are you?",
    "How do seeds know when to sprout?",
    "What should I cook tonight?",
    "How do I store seeds for next year?",
]


def test_to_dspy_examples_reads_chat_preference_and_flat_rows() -> None:
    rows: list[dict[str, Any]] = [
        {
            "id": "a",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
            ],
        },
        {"id": "b", "prompt": "Tea or coffee?", "chosen": "Tea.", "rejected": "Coffee."},
        {"prompt": "2+2?", "reply": "4", "extra": 1},
    ]
    examples = to_dspy_examples(rows, "prompt -> reply", ["prompt"], "reply")
    assert [(e.prompt, e.reply) for e in examples] == [("Hi?", "Hello."), ("Tea or coffee?", "Tea."), ("2+2?", "4")]
    assert all(set(e.inputs().keys()) == {"prompt"} for e in examples)
    flat = to_dspy_examples([{"q": "a", "ctx": "b", "ans": "c"}], "q, ctx -> ans", ["q", "ctx"], "ans")
    assert dict(flat[0].inputs()) == {"q": "a", "ctx": "b"} and flat[0].ans == "c"
    with pytest.raises(ShapingError, match="rows:1: messages: the last message must be the assistant's"):
        to_dspy_examples([{"messages": [{"role": "user", "content": "x"}]}], "prompt -> reply", ["prompt"], "reply")
    with pytest.raises(ShapingError, match="output_field='answer': not an output field"):
        to_dspy_examples(rows, "prompt -> reply", ["prompt"], "answer")
    with pytest.raises(ShapingError, match=r"rows:1: missing ans \(several input fields"):
        to_dspy_examples([{"q": "a", "ctx": "b"}], "q, ctx -> ans", ["q", "ctx"], "ans")


def test_a_junk_proposal_is_read_like_gepa_and_the_request_fits_a_short_context() -> None:
    assert extract_instruction("Sure!\n```markdown\nYou are Juniper.\n```\nthanks") == "You are Juniper."
    assert extract_instruction("```\nunclosed prompt") == "unclosed prompt"
    assert extract_instruction("``` ```") == "" and extract_instruction("") == ""
    long = "x" * 5000
    request = reflection_prompt(long, [{"Inputs": {"prompt": "hi"}, "Generated Outputs": long, "Feedback": long}], 900)
    assert len(request) <= 900 and "```" in request


def test_the_metrics_score_in_0_1_with_feedback_for_the_reflection() -> None:
    import dspy

    cfg = composed("prompt=gepa").prompt
    gold = dspy.Example(prompt="Who are you?", reference="Juniper").with_inputs("prompt")
    adherence = make_metric(cfg)  # data/identity/facts.yaml: 4 facts
    scored = adherence(gold, dspy.Prediction(reply="I am Juniper and I keep a seed library in the valley."))
    assert scored.score == pytest.approx(3 / 4)
    assert scored.feedback == "States name, seed library, river valley; misses botanist."
    assert adherence(gold, dspy.Prediction(reply="  ")).score == 0.0
    contains = make_metric(dataclasses.replace(cfg, metric=PromptMetric.contains))
    assert contains(gold, dspy.Prediction(reply="my name is juniper")).score == 1.0
    assert contains(gold, dspy.Prediction(reply="I am a bot")).feedback == "Should say: Juniper"
    with pytest.raises(ShapingError, match=r"prompt\.metric=judge: needs the judge model"):
        make_metric(dataclasses.replace(cfg, metric=PromptMetric.judge))


@pytest.fixture
def gepa_cfg(tmp_path: Path) -> Config:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = composed("prompt=gepa")
    cfg.prompt = dataclasses.replace(
        cfg.prompt,
        prompts=str(prompts),
        max_prompts=None,
        max_metric_calls=6,
        reflection_minibatch_size=1,
        min_instruction_chars=10,
        cache_dir=str(tmp_path / "cache"),
    )
    return cfg


def _posts(log: Path) -> int:
    return sum("POST /v1/chat/completions" in line for line in log.read_text().splitlines())


@pytest.mark.slow
def test_gepa_records_every_candidate_keeps_the_best_and_a_cached_rerun_asks_nothing(
    gepa_cfg: Config, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every connection DSPy and LiteLLM open: the model cost map and telemetry must not reach the network
    connected: list[Any] = []
    connect = socket.socket.connect

    def recording_connect(self: socket.socket, address: Any) -> Any:
        connected.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    opt = gepa_cfg.prompt
    log = tmp_path / "serve.log"
    with running_server(tiny_model_dir, log_path=log) as url:
        served = Endpoint(tiny_model_dir.name, url, temperature=0.8, max_tokens=16)
        first = run_gepa(opt, seed=0, student=served, reflection=served)
        sent = _posts(log)
        again = run_gepa(opt, seed=0, student=served, reflection=served)
        assert _posts(log) == sent > 0  # the re-run was answered from DSPy's cache on disk
    assert connected and {address[0] for address in connected} == {"127.0.0.1"}

    # the budget: GEPA stops at the first check past max_metric_calls, at most one iteration over
    # (two minibatch evaluations and a full validation pass)
    assert first.train == 2 and first.val == 2
    assert opt.max_metric_calls is not None
    assert opt.max_metric_calls <= first.metric_calls <= opt.max_metric_calls + 2 + first.val
    assert sum(first.proposals.values()) >= 1  # the reflection model was asked at least once
    # every candidate, the seed first; the chosen one has the best validation score recorded
    seed_text = Path(opt.seed_file).read_text().strip()
    assert first.candidates[0]["prompt"] == seed_text and first.candidates[0]["seed"]
    scores = [c["val_score"] for c in first.candidates]
    assert first.best_score == max(scores) and first.candidates[first.best_index]["prompt"] == first.best_prompt
    for c in first.candidates:
        assert c["val_score"] == pytest.approx(sum(c["val_scores"]) / len(c["val_scores"]))
    assert dataclasses.asdict(again) | {"wall_s": 0} == dataclasses.asdict(first) | {"wall_s": 0}

    write_outcome(first, tmp_path / "out", tmp_path / "out" / "prompt.md")
    written = [json.loads(line) for line in (tmp_path / "out" / "candidates.jsonl").read_text().splitlines()]
    assert [c["prompt"] for c in written] == [c["prompt"] for c in first.candidates]
    assert (tmp_path / "out" / "prompt.md").read_text().strip() == first.best_prompt.strip()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["seed_score"] == round(scores[0], 4) and metrics["metric_calls"] == first.metric_calls


@pytest.fixture(scope="module")
def repo(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's smoke repo, after `dvc repro`."""
    return copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("gepa-e2e") / "repo")


@pytest.mark.slow
def test_dvc_exp_run_prompt_gepa_reruns_synthesis_on_the_optimised_prompt(repo: Path) -> None:
    """`dvc exp run -S prompt=gepa` adds optimize_prompt@gepa and reruns everything downstream of the
    teacher's system prompt (run here up to validate; train and evaluate are then stale in dvc status);
    the teacher's requests carry the optimised prompt, not identity.md (the seed here is another
    prompt, so that even a run that keeps its seed shows which file was used)."""
    seed = repo / "data" / "identity" / "seed_prompt.md"
    seed.write_text("You are Juniper, a field botanist. Speak warmly about seeds, roots and seasons.\n")
    try:
        out = sh(
            repo,
            "dvc",
            "exp",
            "run",
            "validate",  # train and evaluate: DVC's own downstream logic, read from dvc status below
            "-S",
            "prompt=gepa",
            "-S",
            "prompt.seed_file=data/identity/seed_prompt.md",
            "-S",
            "prompt.max_prompts=4",
            "-S",
            "prompt.max_metric_calls=6",
            "-S",
            SMOKE,
        ).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == {"optimize_prompt@gepa", "synthesize@identity_distillation", "validate"}
        assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == {"train", "evaluate"}
        best = (repo / "data/prompt/gepa/prompt.md").read_text(encoding="utf-8").strip()
        candidates = [json.loads(x) for x in (repo / "data/prompt/gepa/candidates.jsonl").read_text().splitlines()]
        assert candidates[0]["prompt"] == seed.read_text().strip() and best in [c["prompt"] for c in candidates]
        manifest = json.loads((repo / "data/synth/identity_distillation/manifest.json").read_text())
        teacher = manifest["model_deps"]["teacher"]["fingerprint"]["system_prompt_sha256"]
        identity = (repo / "data/identity/identity.md").read_text(encoding="utf-8").strip()
        assert teacher == hashlib.sha256(best.encode()).hexdigest() != hashlib.sha256(identity.encode()).hexdigest()
        metrics = json.loads((repo / "data/prompt/gepa/metrics.json").read_text())
        assert metrics["best_score"] >= metrics["seed_score"] and metrics["metric_calls"] >= 6
    finally:
        seed.unlink()
        sh(repo, sys.executable, "-m", "shaping.config", SMOKE)  # the workspace's params back to the default
