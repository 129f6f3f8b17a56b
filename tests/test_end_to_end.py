"""The real DVC pipeline in a temp copy of the repository, shrunk with +experiment=smoke."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import SMOKE, copy_smoke_repo, sh


@pytest.fixture(scope="module")
def repo(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's smoke repo, after `dvc repro`."""
    return copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("e2e") / "repo")


@pytest.mark.slow
def test_repro_builds_every_stage(repo: Path) -> None:
    metrics = json.loads((repo / "eval" / "metrics.json").read_text())
    for name in ("base", "tuned", "teacher"):
        assert set(metrics[name]) >= {"loss", "perplexity"}
    assert set(metrics["think_tags"]["tuned"]) == {"valid_share", "with_tags_share"}
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    # distillation closes part of the base-to-teacher gap; adherence is measured for all three models
    assert metrics["teacher"]["loss"] < metrics["base"]["loss"] and metrics["gap_closed"] > 0
    assert {m: metrics["adherence"][m]["n"] for m in ("base", "teacher", "tuned")} == dict.fromkeys(
        ("base", "teacher", "tuned"), 2
    )
    samples = [json.loads(line) for line in (repo / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "base", "tuned"} <= set(samples[0])
    for record in (
        "models/base/run.json",
        "data/synth/identity_distillation/run.json",
        "data/validated/run.json",
        "models/adapter/run.json",
        "eval/run.json",
    ):
        saved = json.loads((repo / record).read_text())
        assert saved["exit_status"] == "success" and saved["git_commit"], record
        assert saved["inputs"] and all(len(h) == 64 for h in saved["inputs"].values()), record
    assert "up to date" in sh(repo, "dvc", "status").stdout


@pytest.mark.slow
def test_changing_a_prompt_file_stales_synthesis_and_descendants_only(repo: Path) -> None:
    prompts = repo / "data" / "identity" / "prompts" / "about_you.txt"  # first file: inside the smoke limit
    original = prompts.read_text()
    try:
        prompts.write_text("What do you do on a foggy morning?\n" + original)
        status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
        assert set(status) == {"synthesize@identity_distillation"}
        # dvc status names the stage whose deps changed; repro reruns it and what depends on it (here up
        # to validate: the new data then stales the rest of its descendants, train and evaluate)
        out = sh(repo, "dvc", "repro", "validate").stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == {"synthesize@identity_distillation", "validate"}
        assert "Stage 'prepare_base' didn't change, skipping" in out
        assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == {"train", "evaluate"}
    finally:
        prompts.write_text(original)
    sh(repo, "dvc", "repro")  # back to the original outputs (from DVC's run cache)
    assert "up to date" in sh(repo, "dvc", "status").stdout


BAD_ROWS = [
    "{not json",
    '{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}',
    '{"id": "empty", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": ""}]}',
    '{"id": "t", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "<think>"}]}',
    '{"id": "order", "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]}',
    '{"id": 6, "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}',
]


@pytest.mark.slow
def test_corrupted_dataset_stops_the_dag_at_validate(repo: Path) -> None:
    bad = repo / "data" / "manual" / "bad.jsonl"
    bad.write_text("\n".join(BAD_ROWS) + "\n")
    params = (repo / "params.yaml").read_text()
    try:
        sh(
            repo,
            sys.executable,
            "-m",
            "shaping.config",
            SMOKE,
            "dataset.sources=[identity_distillation,data/manual/bad.jsonl]",
        )
        proc = sh(repo, "dvc", "repro", check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "Running stage 'train'" not in output
        for line in range(1, 7):
            assert f"data/manual/bad.jsonl:{line}: " in output, output
        assert "Traceback" not in output
        report = json.loads((repo / "data" / "validated" / "report.json").read_text())
        assert {e["line"] for e in report["errors"] if e["file"].endswith("bad.jsonl")} == set(range(1, 7))
    finally:
        bad.unlink()
        (repo / "params.yaml").write_text(params)
    sh(repo, "dvc", "repro")  # the clean data back (run cache)
    assert "up to date" in sh(repo, "dvc", "status").stdout


@pytest.mark.slow
def test_guards_fail_evaluate_just_past_the_achieved_value(repo: Path) -> None:
    achieved = json.loads((repo / "eval" / "metrics.json").read_text())["tuned"]["loss"]
    params = (repo / "params.yaml").read_text()
    try:
        guard = f"eval.guards=[{{metric: tuned.loss, max: {achieved - 1e-4}}}]"
        sh(repo, sys.executable, "-m", "shaping.config", SMOKE, guard)
        proc = sh(repo, "dvc", "repro", check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Traceback" not in output
        assert "Running stage 'evaluate'" in output and "Running stage 'train'" not in output
        assert f"guard failed: tuned.loss = {achieved:g} is above the guard's max {achieved - 1e-4:g}" in output
        guard = f"eval.guards=[{{metric: tuned.loss, max: {achieved + 1e-4}}}]"
        sh(repo, sys.executable, "-m", "shaping.config", SMOKE, guard)
        sh(repo, "dvc", "repro")
        assert json.loads((repo / "eval" / "metrics.json").read_text())["guards"] == {"failed": 0, "total": 1}
    finally:
        (repo / "params.yaml").write_text(params)
    sh(repo, "dvc", "repro")
    assert "up to date" in sh(repo, "dvc", "status").stdout


@pytest.mark.slow
def test_hand_runs_and_sweeps_never_touch_dvc_outputs(repo: Path) -> None:
    """A Hydra sweep by hand writes under its own folders (a single hand run: test_train_launch.py)."""
    before = (repo / "models" / "adapter" / "adapter_model.safetensors").read_bytes()
    sh(repo, sys.executable, "src/train.py", "-m", "lora.r=2,4", SMOKE, "hydra.sweep.dir=multirun/sweep")
    ranks = [
        json.loads((repo / f"multirun/sweep/{n}/models/adapter/adapter_config.json").read_text())["r"] for n in (0, 1)
    ]
    assert ranks == [2, 4]
    assert (repo / "models" / "adapter" / "adapter_model.safetensors").read_bytes() == before
    assert "up to date" in sh(repo, "dvc", "status").stdout
