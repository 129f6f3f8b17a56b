"""Baseline comparison: reading another run's metrics from a file, a git rev or a DVC experiment's
ref (a real git repository), deltas, and regression checks past the tolerance."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shaping.config.schema import BaselineCheck
from shaping.errors import ShapingError
from shaping.evaluation import check_baseline, check_baseline_config, metric_deltas, read_baseline
from shaping.evaluation.plots import plot_tables

BASELINE = {
    "tuned": {"loss": 2.0, "perplexity": 7.389, "tokens": 100},
    "judge": {"unparseable": 1, "tuned": {"voice": {"mean": 3.0, "n": 4}}},
    "samples": {"tuned": {"eos_rate": 0.5}},
    "guards": {"failed": 0, "total": 1},
}
CURRENT = {
    "tuned": {"loss": 2.15, "perplexity": 8.585, "tokens": 100},
    "judge": {"unparseable": 0, "tuned": {"voice": {"mean": 3.5, "n": 4}}},
    "think_tags": {"tuned": {"valid_share": 1.0}},  # not in the baseline: no delta
    "guards": {"failed": 1, "total": 1},
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_deltas_cover_numbers_both_runs_have() -> None:
    assert metric_deltas(CURRENT, BASELINE) == {
        "tuned": {"loss": 0.15, "perplexity": 1.196, "tokens": 0},
        "judge": {"unparseable": -1, "tuned": {"voice": {"mean": 0.5, "n": 0}}},
    }


def test_checks_fail_past_the_tolerance_naming_metric_baseline_and_value() -> None:
    checks = [BaselineCheck(metric="tuned.loss", better="lower"), BaselineCheck("judge.tuned.voice.mean", "higher")]
    # loss is worse by 0.15 = 7.5% of 2.0; voice is better
    strict = check_baseline(CURRENT, BASELINE, checks, tolerance=0.05, source="main (abc12345)")
    assert [c["passed"] for c in strict] == [False, True]
    assert strict[0]["message"] == (
        "tuned.loss = 2.15 against 2 at baseline main (abc12345): worse by 0.15, "
        "more than eval.baseline_tolerance 0.05 x 2 = 0.1 (lower is better)"
    )
    assert [c["passed"] for c in check_baseline(CURRENT, BASELINE, checks, tolerance=0.1, source="x")] == [True, True]
    # voice 3.5 against a baseline of 4.0 is worse by 0.5 = 12.5%
    worse_voice = {**CURRENT, "judge": {"tuned": {"voice": {"mean": 3.5}}}}
    better_voice = {**BASELINE, "judge": {"tuned": {"voice": {"mean": 4.0}}}}
    result = check_baseline(worse_voice, better_voice, checks[1:], tolerance=0.1, source="x")
    assert not result[0]["passed"] and "(higher is better)" in result[0]["message"]
    missing = check_baseline(CURRENT, BASELINE, [BaselineCheck("think_tags.tuned.valid_share")], 0.05, "main")
    assert missing[0]["message"] == "think_tags.tuned.valid_share: no such numeric metric in the baseline main"


def test_bad_check_settings_name_their_key() -> None:
    with pytest.raises(ShapingError, match=r"eval\.baseline_checks\[0\]\.better='smaller': must be lower or higher"):
        check_baseline_config([BaselineCheck("tuned.loss", "smaller")], 0.05)
    with pytest.raises(ShapingError, match=r"eval\.baseline_tolerance=-0\.1: must be 0 or more"):
        check_baseline_config([], -0.1)


def test_baseline_from_a_file_a_rev_and_an_experiment_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(BASELINE))
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "run 1")
    first = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(CURRENT))
    git(tmp_path, "commit", "-qam", "run 2")
    # what `dvc exp run -n lowlr` leaves: a commit under refs/exps/<xx>/<rest of the parent's sha>/<name>
    git(tmp_path, "update-ref", f"refs/exps/{first[:2]}/{first[2:]}/lowlr", first)

    assert read_baseline("HEAD~1", "eval/metrics.json") == (BASELINE, f"HEAD~1 ({first[:8]})")
    assert read_baseline("main", "eval/metrics.json")[0] == CURRENT
    assert read_baseline("lowlr", "eval/metrics.json") == (BASELINE, f"lowlr ({first[:8]})")
    (tmp_path / "old.json").write_text(json.dumps(BASELINE))
    assert read_baseline("old.json", "eval/metrics.json") == (BASELINE, "old.json")

    with pytest.raises(ShapingError, match=r"eval\.baseline=nope: not a metrics JSON file, a git rev or a DVC exp"):
        read_baseline("nope", "eval/metrics.json")
    with pytest.raises(
        ShapingError,
        match=rf"eval\.baseline=HEAD: eval/other\.json is not committed at {git(tmp_path, 'rev-parse', 'HEAD')[:8]}",
    ):
        read_baseline("HEAD", "eval/other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ShapingError, match=r"eval\.baseline=broken\.json: .* is not valid JSON"):
        read_baseline("broken.json", "eval/metrics.json")


def test_plot_tables_hold_what_ran() -> None:
    metrics = {
        "base": {"loss": 2.0, "perplexity": 7.39, "tokens": 9},
        "tuned": {"loss": 1.5, "perplexity": 4.48, "tokens": 9},
        "judge": {
            "unparseable": 1,
            "tuned": {"judged": 2, "voice": {"mean": 4.0, "ci_low": 3.0, "ci_high": 5.0, "n": 2}},
            "base": {"judged": 2, "voice": {"mean": None, "ci_low": None, "ci_high": None, "n": 0}},
        },
    }
    tables = plot_tables(metrics)
    assert tables["loss.json"] == [
        {"model": "base", "loss": 2.0, "perplexity": 7.39},
        {"model": "tuned", "loss": 1.5, "perplexity": 4.48},
    ]
    assert tables["judge.json"] == [
        {
            "model": "tuned",
            "criterion": "voice",
            "model_criterion": "tuned: voice",
            "mean": 4.0,
            "ci_low": 3.0,
            "ci_high": 5.0,
            "n": 2,
        }
    ]
    assert tables["identity.json"] == []
