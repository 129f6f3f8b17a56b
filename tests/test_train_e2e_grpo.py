"""`dvc exp run -S train=grpo` and `-S train=orpo` on the embedded default, in a temp copy of the smoke
repo. For the lead to fold into tests/test_train_e2e.py's EXPERIMENTS (one repo copy for every method):

    ("train=grpo", {"method": "grpo", "adapter": "lora"}, ("train",)),
    ("train=orpo", {"method": "orpo", "adapter": "lora"}, ("train",)),

and, in its loop, the two `if override == ...` blocks below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import SMOKE, copy_smoke_repo, sh


@pytest.fixture(scope="module")
def repo(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("train-e2e-grpo") / "repo")


@pytest.mark.slow
@pytest.mark.parametrize("override", ["train=grpo", "train=orpo"])
def test_grpo_and_orpo_run_as_dvc_experiments(repo: Path, override: str) -> None:
    out = sh(repo, "dvc", "exp", "run", "train", "-S", override, "-S", SMOKE).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train"}, out[-3000:]
    record = json.loads((repo / "models/adapter/run.json").read_text())
    assert record["exit_status"] == "success"
    method = override.split("=")[1]
    assert (record["details"]["method"], record["details"]["adapter"], record["details"]["steps"]) == (
        method,
        "lora",
        6,
    )
    assert (repo / "models/adapter/adapter_model.safetensors").is_file()
    if override == "train=grpo":  # conf/train/grpo.yaml's three rewards, each one's last mean in the record
        assert {"reward", "reward_eos", "reward_length_band", "reward_think_tags"} <= set(record["details"])
        lines = (repo / "dvclive/train/plots/metrics/rewards/eos/mean.tsv").read_text().splitlines()
        assert len(lines) == 1 + 6  # one point per step
    if override == "train=orpo":
        assert {"log_odds_ratio", "log_odds_chosen", "nll_loss"} <= set(record["details"])
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert method in shown  # the experiment's params (train.method) in dvc exp show
