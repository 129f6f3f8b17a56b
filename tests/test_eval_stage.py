"""The evaluate stage under real DVC, in a temp copy of the repository (+experiment=smoke): the
full metric set as a `dvc exp run` experiment compared with HEAD, a baseline by experiment name,
a regression past eval.baseline_tolerance failing `dvc repro` at evaluate, and `dvc plots show` (a
QLoRA experiment scored on its 4-bit base: tests/test_train_e2e.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import SMOKE, copy_smoke_repo, sh

# the full metric set, kept small: two prompts (smoke), two SciFact claims of 16 tokens
FULL = ["-S", SMOKE, "-S", "eval=full", "-S", "eval.claims.max_samples=2", "-S", "eval.claims.max_new_tokens=16"]


def read(repo: Path, path: str) -> object:
    return json.loads((repo / path).read_text())


def lines(repo: Path, path: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (repo / path).read_text().splitlines()]


@pytest.fixture(scope="module")
def repo(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's smoke repo after `dvc repro`, outputs committed."""
    return copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("eval-stage") / "repo")


@pytest.mark.slow
def test_default_eval_writes_plot_tables_and_plots_render(repo: Path, tmp_path: Path) -> None:
    metrics = read(repo, "eval/metrics.json")
    assert isinstance(metrics, dict) and "judge" not in metrics  # the default stays cheap
    assert read(repo, "eval/plots/loss.json") == [
        {"model": name, "loss": metrics[name]["loss"], "perplexity": metrics[name]["perplexity"]}
        for name in ("base", "teacher", "tuned")
    ]
    assert read(repo, "eval/plots/judge.json") == [] and read(repo, "eval/plots/identity.json") == []
    assert read(repo, "eval/details/checks.json") == {"guards": [], "baseline": None, "baseline_checks": []}
    proc = sh(repo, "dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    assert "failed to load" not in (proc.stdout + proc.stderr).lower()
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Training loss per step", "Held-out loss per model", "mean loss on held-out assistant tokens"):
        assert title in html


@pytest.mark.slow
def test_full_eval_experiment_against_head_then_by_name(repo: Path) -> None:
    sh(repo, "dvc", "exp", "run", "-n", "fulleval", *FULL, "-S", "eval.baseline=HEAD")
    metrics = read(repo, "eval/metrics.json")
    assert isinstance(metrics, dict)
    # judge: the smoke base model judges (models.judge is local hf): 2 prompts x base and tuned, none parse
    assert metrics["judge"]["unparseable"] == 4 and metrics["judge"]["tuned"]["judged"] == 2
    assert len(lines(repo, "eval/details/judge.jsonl")) == 4
    assert metrics["claims"]["tuned"]["total"] == 2 and metrics["claims"]["tuned"]["with_evidence"] == 2
    assert [r["claim_id"] for r in lines(repo, "eval/details/claims.jsonl")] == ["1", "2", "1", "2"]
    identity = lines(repo, "eval/details/identity.jsonl")
    assert metrics["identity"]["prompts"] == len(identity) == 2
    assert all(r["tuned_agrees"] is False for r in identity if not (r["tuned"] and r["teacher"]))  # blank never agrees
    # the same models and data as HEAD's run: every shared figure unchanged
    assert metrics["baseline_delta"]["tuned"] == {"loss": 0.0, "perplexity": 0.0, "tokens": 0}
    checks = read(repo, "eval/details/checks.json")
    assert isinstance(checks, dict) and checks["baseline"].startswith("HEAD (")
    assert [c["passed"] for c in checks["baseline_checks"]] == [True]
    table = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    runs = [run for row in table for exp in (row.get("experiments") or []) for run in exp["revs"]]
    (shown,) = [run["data"] for run in runs if run.get("name") == "fulleval"]
    assert shown["metrics"]["eval/metrics.json"]["data"]["judge"]["unparseable"] == 4
    assert shown["params"]["params.yaml"]["data"]["eval"]["baseline"] == "HEAD"
    gate = shown["metrics"]["data/validated/report.json"]["data"]  # the validation gate's figures, a column too
    assert gate["passed"] and gate["checks"]["distinct_2"]["value"] > 0
    # a hand run compares with the experiment by its name (its git ref), not with the workspace
    sh(repo, sys.executable, "src/evaluate.py", SMOKE, "eval.baseline=fulleval", "hydra.run.dir=outputs/vs-exp")
    by_hand = read(repo, "outputs/vs-exp/eval/metrics.json")
    assert isinstance(by_hand, dict) and by_hand["baseline_delta"]["tuned"]["loss"] == 0.0
    assert "judge" not in by_hand["baseline_delta"]  # the hand run has the default metrics only
    assert read(repo, "outputs/vs-exp/eval/details/checks.json")["baseline"].startswith("fulleval (")  # type: ignore[index]


@pytest.mark.slow
def test_regression_past_the_tolerance_fails_evaluate(repo: Path) -> None:
    committed = json.loads(sh(repo, "git", "show", "HEAD:eval/metrics.json").stdout)
    achieved = committed["tuned"]["loss"]
    better = {**committed, "tuned": {**committed["tuned"], "loss": round(achieved * 0.9, 6)}}  # 10% lower loss
    (repo / "baseline.json").write_text(json.dumps(better))
    params = (repo / "params.yaml").read_text()
    try:
        sh(repo, sys.executable, "-m", "shaping.config", SMOKE, "eval.baseline=baseline.json")
        proc = sh(repo, "dvc", "repro", check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Traceback" not in output
        assert "Running stage 'evaluate'" in output and "Running stage 'train'" not in output
        worse = round(achieved - achieved * 0.9, 6)
        assert (
            f"baseline regression: tuned.loss = {achieved:g} against {achieved * 0.9:g} at baseline baseline.json: "
            f"worse by {achieved - round(achieved * 0.9, 6):g}, more than eval.baseline_tolerance 0.05" in output
        )
        sh(
            repo,
            sys.executable,
            "-m",
            "shaping.config",
            SMOKE,
            "eval.baseline=baseline.json",
            "eval.baseline_tolerance=0.2",
        )
        sh(repo, "dvc", "repro")
        assert read(repo, "eval/metrics.json")["baseline_delta"]["tuned"]["loss"] == pytest.approx(worse)  # type: ignore[index]
    finally:
        (repo / "params.yaml").write_text(params)
        (repo / "baseline.json").unlink()
