"""`dvc exp run` of each training method and adapter on the embedded default, in ONE temp repo
copy: the upstream stages run once, so every experiment reruns only train (and evaluate). The QLoRA
experiment's adapter is scored on its 4-bit base, from the train stage's run record next to it.
DPO, DoRA and the full fine-tune (lora=none) are not among them (suite time): they train in process
(test_train_methods, test_train_eval, test_train_export; the full fine-tune is evaluated in
test_eval_qlora), and the train stage composes each override like the rest.
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


# (override, what the run record must say, the stages to run): evaluate loads a LoRA adapter (KTO's,
# GRPO's and distill's too) one way, so it runs for the QLoRA one (4-bit base)
EXPERIMENTS = [
    ("train=kto", {"method": "kto", "adapter": "lora"}, ("train",)),
    ("train=grpo", {"method": "grpo", "adapter": "lora"}, ("train",)),
    ("train=distill", {"method": "distill", "adapter": "lora"}, ("train",)),
    ("lora=qlora", {"method": "sft", "adapter": "qlora"}, ("train", "evaluate")),
]


@pytest.mark.slow
def test_each_method_and_adapter_runs_end_to_end(repo: Path) -> None:
    pytest.importorskip("bitsandbytes")  # lora=qlora (the 'qlora' extra); 4-bit runs on CPU since bnb 0.48
    synthesized = json.loads((repo / "data/validated/train.jsonl").read_text().splitlines()[0])
    assert synthesized["rejected"]  # the DPO pair survives validate's split
    committed = json.loads(sh(repo, "git", "show", "HEAD:eval/metrics.json").stdout)
    for override, expected, stages in EXPERIMENTS:
        out = sh(repo, "dvc", "exp", "run", *stages, "-S", override, "-S", SMOKE).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == set(stages), (override, out[-3000:])
        record = json.loads((repo / "models/adapter/run.json").read_text())
        assert record["exit_status"] == "success", override
        assert {k: record["details"][k] for k in expected} == expected, override
        assert record["details"]["device"] == "cpu" and record["details"]["steps"] == 6
        if "evaluate" in stages:
            metrics = json.loads((repo / "eval/metrics.json").read_text())
            assert isinstance(metrics["tuned"]["loss"], float), override
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
        if override == "lora=qlora":
            assert metrics["tuned"]["base_quantization"] == "nf4"
            assert metrics["base"]["base_quantization"] == metrics["teacher"]["base_quantization"] == "none"
            assert metrics["base"]["loss"] == committed["base"]["loss"]  # the base is still scored unquantized
            # by hand with the default lora over the QLoRA adapter: stopped, naming the record
            proc = sh(repo, sys.executable, "src/evaluate.py", SMOKE, "hydra.run.dir=outputs/lora", check=False)
            output = proc.stdout + proc.stderr
            assert proc.returncode != 0 and "Traceback" not in output
            refusal = "models/adapter/run.json: this adapter was trained as qlora, but lora.quantization is unset"
            assert refusal in output
    proc = sh(
        repo, "dvc", "exp", "run", "train", "-S", "backend=tinker", "-S", SMOKE, check=False, unset=("TINKER_API_KEY",)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    errors = [line for line in out.splitlines() if "TINKER_API_KEY" in line]
    assert len(errors) == 1 and "train failed" in errors[0], out[-3000:]
    assert yaml.safe_load((repo / "params.yaml").read_text())["backend"]["name"] == "tinker"  # what DVC composed
    sh(repo, sys.executable, "-m", "shaping.config", SMOKE)  # the workspace's params back to the default
