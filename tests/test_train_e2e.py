"""`dvc exp run` of each training method on the embedded default, in ONE temp repo copy: the upstream
stages run once, so every experiment reruns only train. DPO, DoRA, QLoRA and the full fine-tune
(lora=none) are not among them (suite time): they train in process (test_train_methods,
test_train_eval, test_train_export; QLoRA and the full fine-tune are trained and evaluated through the
stage code in test_eval_qlora), and the train stage composes each override like the rest.
Last, `-S backend=tinker` without a key fails at train, naming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import SMOKE, copy_smoke_repo, sh


@pytest.fixture(scope="module")
def repo(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's smoke repo, after `dvc repro`."""
    return copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("train-e2e") / "repo")


# (override, what the run record must say); train only: evaluate loads a LoRA adapter (KTO's, GRPO's and
# distill's too) one way, as the smoke build's own run does
EXPERIMENTS = [
    ("train=kto", {"method": "kto", "adapter": "lora"}),
    ("train=grpo", {"method": "grpo", "adapter": "lora"}),
    ("train=distill", {"method": "distill", "adapter": "lora"}),
]


@pytest.mark.slow
def test_each_method_runs_end_to_end(repo: Path) -> None:
    synthesized = json.loads((repo / "data/validated/train.jsonl").read_text().splitlines()[0])
    assert synthesized["rejected"]  # the DPO pair survives validate's split
    for override, expected in EXPERIMENTS:
        out = sh(repo, "dvc", "exp", "run", "train", "-S", override, "-S", SMOKE).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == {"train"}, (override, out[-3000:])
        record = json.loads((repo / "models/adapter/run.json").read_text())
        assert record["exit_status"] == "success", override
        assert {k: record["details"][k] for k in expected} == expected, override
        assert record["details"]["device"] == "cpu" and record["details"]["steps"] == 6
        assert (repo / "models/adapter/adapter_model.safetensors").is_file()
        if override == "train=kto":
            assert {"reward_margin", "kl"} <= set(record["details"])
        if override == "train=grpo":  # conf/train/grpo.yaml's rewards, each logged per step
            assert {"reward", "reward_eos", "reward_length_band", "reward_think_tags"} <= set(record["details"])
            lines = (repo / "dvclive/train/plots/metrics/rewards/eos/mean.tsv").read_text().splitlines()
            assert len(lines) == 1 + 6  # one point per step
        if override == "train=distill":
            assert record["details"]["reverse_kl"] > 0 and "data/identity/identity.md" in record["inputs"]
            assert (repo / "dvclive/train/plots/metrics/reverse_kl.tsv").is_file()
    proc = sh(
        repo, "dvc", "exp", "run", "train", "-S", "backend=tinker", "-S", SMOKE, check=False, unset=("TINKER_API_KEY",)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    errors = [line for line in out.splitlines() if "TINKER_API_KEY" in line]
    assert len(errors) == 1 and "train failed" in errors[0], out[-3000:]
    assert yaml.safe_load((repo / "params.yaml").read_text())["backend"]["name"] == "tinker"  # what DVC composed
    sh(repo, sys.executable, "-m", "shaping.config", SMOKE)  # the workspace's params back to the default
