"""Checkpoints and resume: a train stage killed mid-run and run again ends where an uninterrupted run does."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.io import atomic_dir
from shaping.training import checkpointing, hf_peft

from .conftest import DIALOGUES, REPO, copy_smoke_repo, sh
from .test_train_launch import TRAIN_ENV, run_train, stage_params


def final_state(root: Path) -> tuple[dict[str, torch.Tensor], list[tuple[int, float]]]:
    """The adapter's weights and the logged (step, loss) rows of the run under `root`."""
    weights = load_file(root / "models" / "adapter" / "adapter_model.safetensors")
    with open(root / "dvclive" / "train" / "plots" / "metrics" / "loss.tsv") as f:
        losses = [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f, delimiter="\t")]
    return weights, losses


def complete_checkpoints(root: Path) -> list[int]:
    return sorted(
        int(p.parent.name.split("-")[1]) for p in root.glob("models/checkpoints/*/checkpoint-*/trainer_state.json")
    )


def kill_after_checkpoint(root: Path, params: Path, at_least: int = 1, settle_s: float = 5) -> None:
    """Start the train stage under `root`, SIGKILL it once a complete checkpoint at step `at_least` or
    later is saved, then wait `settle_s` (a launcher gets SIGTERM from the kernel and stops its workers)."""
    running = subprocess.Popen(
        [sys.executable, str(REPO / "src" / "train.py"), "--params", str(params)],
        cwd=root,
        env=TRAIN_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not [s for s in complete_checkpoints(root) if s >= at_least] and time.monotonic() < deadline:
        assert running.poll() is None, "training ended before the kill; make the run longer"
        time.sleep(0.01)
    running.send_signal(signal.SIGKILL)
    running.wait()
    time.sleep(settle_s)


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(cfg: Config, tmp_path: Path) -> None:
    # 24 rows, batch 2: 12 steps an epoch; the kill lands mid-epoch, so resuming must also
    # restore the position in the shuffled data, the LR schedule, AdamW's moments and dropout's RNG
    cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size = 1, 100, 2
    cfg.train.learning_rate, cfg.train.logging_steps, cfg.train.save_steps = 1e-2, 1, 10
    cfg.lora.dropout = 0.1
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_train(straight, stage_params(cfg, straight, rows=24))
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected_weights, expected_losses = final_state(straight)
    assert expected_losses[-1][1] < expected_losses[0][1]
    assert complete_checkpoints(straight) == [], "a finished run clears its checkpoints (keep_checkpoints=false)"
    assert [p.name for p in (straight / "models" / "checkpoints").iterdir()] == ["README.txt"], "the DVC out stays"

    params = stage_params(cfg, killed, rows=24)
    kill_after_checkpoint(killed, params, at_least=20, settle_s=0)
    saved = complete_checkpoints(killed)
    assert saved and max(saved) < 100, saved
    assert not (killed / "models" / "adapter").exists()
    assert list((killed / "models").glob(".adapter.*.tmp")), "the kill left the adapter's temp folder"

    proc = run_train(killed, params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"checkpoint-{max(saved)} (step {max(saved)})" in proc.stderr
    assert not list((killed / "models").glob(".adapter.*.tmp")), "the re-run removed it"
    weights, losses = final_state(killed)
    # DVCLive's curve of the resumed run is the whole run's: the checkpoint's history replayed, then the rest
    assert [step for step, _ in losses] == [step for step, _ in expected_losses] == list(range(1, 101))
    torch.testing.assert_close(
        [loss for _, loss in losses], [loss for _, loss in expected_losses], rtol=1e-4, atol=1e-5
    )
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected_weights[name], rtol=1e-4, atol=1e-6)


def base_copy(cfg: Config, tmp_path: Path) -> Path:
    """A private copy of the session's tiny model, pointed at by `cfg` (these tests rewrite its files)."""
    copy = tmp_path / "base"
    shutil.copytree(cfg.model.name_or_path, copy)
    cfg.model.name_or_path = str(copy)
    return copy


def test_checkpoint_key_follows_params_data_and_the_base_models_content(cfg: Config, tmp_path: Path) -> None:
    base = base_copy(cfg, tmp_path)
    key = checkpointing.checkpoint_key(cfg, "a" * 64)
    assert key == checkpointing.checkpoint_key(cfg, "a" * 64)
    assert key != checkpointing.checkpoint_key(cfg, "b" * 64), "other training data: another key"
    cfg.train.learning_rate *= 2
    assert key != checkpointing.checkpoint_key(cfg, "a" * 64)
    cfg.train.learning_rate /= 2
    # what `dvc checkout`, a run-cache restore or a touch do: the same bytes with new mtimes (and inodes)
    for path in base.iterdir():
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
        os.utime(path, (time.time() + 60, time.time() + 60))
    (base / "run.json").write_text('{"started": "another time"}')  # a stage record, not the model
    assert key == checkpointing.checkpoint_key(cfg, "a" * 64), "the same base model, rewritten: the same key"
    weights = bytearray((base / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (base / "model.safetensors").write_bytes(bytes(weights))
    assert key != checkpointing.checkpoint_key(cfg, "a" * 64), "a base with other weights: another key"


def test_checkpoint_key_leaves_out_what_does_not_change_the_weights(cfg: Config) -> None:
    key = checkpointing.checkpoint_key(cfg, "a" * 64)
    cfg.train.merge, cfg.train.keep_checkpoints, cfg.train.keep_unfinished_runs = True, True, 9
    cfg.train.save_steps, cfg.train.save_total_limit, cfg.train.logging_steps = 7, 5, 1
    cfg.train.gradient_checkpointing = True  # recomputes the same activations (the OOM message suggests it)
    assert cfg.train.launcher == "none"
    cfg.accelerate = {**cfg.accelerate, "num_processes": 8, "distributed_type": "FSDP"}  # not launched: unused
    assert key == checkpointing.checkpoint_key(cfg, "a" * 64)
    cfg.lora.r *= 2
    assert key != checkpointing.checkpoint_key(cfg, "a" * 64)
    cfg.lora.r //= 2

    cfg.train.launcher = "accelerate"
    launched = checkpointing.checkpoint_key(cfg, "a" * 64)
    assert launched != key, "a launched run is another run"
    cfg.accelerate = {**cfg.accelerate, "main_process_port": 29999, "machine_rank": 0, "same_network": False}
    assert launched == checkpointing.checkpoint_key(cfg, "a" * 64), "where the processes meet changes nothing"
    cfg.accelerate = {**cfg.accelerate, "num_processes": 2}
    assert launched != checkpointing.checkpoint_key(cfg, "a" * 64), "more processes: a larger global batch"


def checkpoint(run_dir: Path, step: int, age: float) -> None:
    """A complete checkpoint at `step` in `run_dir`, written `age` seconds ago."""
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    for p in (path / "trainer_state.json", path, run_dir):
        os.utime(p, (time.time() - age, time.time() - age))


def test_checkpoint_folder_lifecycle(cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "checkpoints"
    # three killed runs of other configs, the oldest first; and a folder that is no run's
    for age, key in ((300, "0000000000000001"), (200, "0000000000000002"), (100, "0000000000000003")):
        checkpoint(root / key, 5, age)
    (root / "notes").mkdir()
    with caplog.at_level(logging.INFO, logger="shaping.training.checkpointing"):
        run_dir = checkpointing.claim_run_dir(root, "fedcba9876543210", keep_unfinished=2)
    kept = sorted(p.name for p in root.iterdir())
    assert kept == ["0000000000000002", "0000000000000003", "README.txt", "fedcba9876543210", "notes"]
    assert "0000000000000001" in caplog.text and "keep_unfinished_runs=2" in caplog.text
    assert "resume" in (root / "README.txt").read_text(), "the folder says what it is (and DVC sees it non-empty)"
    assert checkpointing.resume_checkpoint(run_dir) is None
    # run A killed, run B, run A again: A resumes
    assert checkpointing.claim_run_dir(root, "0000000000000002", keep_unfinished=2) == root / "0000000000000002"
    assert checkpointing.resume_checkpoint(root / "0000000000000002") == str(root / "0000000000000002/checkpoint-5")
    # a run that failed (or was killed) before its first checkpoint leaves an empty folder: it has nothing
    # to resume, so the next start deletes it, and it never counts among the runs kept
    assert not run_dir.exists(), "fedcba's run never saved a checkpoint"
    for key in ("00000000000000e1", "00000000000000e2", "00000000000000e3"):  # three typo'd runs failing at start
        checkpointing.claim_run_dir(root, key, keep_unfinished=2)
    run_dir = checkpointing.claim_run_dir(root, "fedcba9876543210", keep_unfinished=2)
    kept = sorted(p.name for p in root.iterdir())
    assert kept == ["0000000000000002", "0000000000000003", "README.txt", "fedcba9876543210", "notes"]
    with pytest.raises(ShapingError, match=r"train.keep_unfinished_runs=-1: must be 0 or more"):
        checkpointing.claim_run_dir(root, "fedcba9876543210", keep_unfinished=-1)

    for step in (10, 20, 30):
        (run_dir / f"checkpoint-{step}").mkdir()
    (run_dir / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (run_dir / "checkpoint-20" / "trainer_state.json").write_text("{}")
    assert checkpointing.resume_checkpoint(run_dir) == str(run_dir / "checkpoint-20"), "30 was cut short"

    args = checkpointing.checkpoint_args(cfg, run_dir)
    assert args["output_dir"] == str(run_dir) and args["save_strategy"] == "steps" and not args["save_only_model"]
    cfg.train.save_steps = 0
    assert checkpointing.checkpoint_args(cfg, run_dir)["save_strategy"] == "no"

    checkpointing.finish_run_dir(run_dir, keep=True)
    assert not run_dir.exists() and (root / "last" / "checkpoint-20").is_dir()
    assert checkpointing.resume_checkpoint(checkpointing.claim_run_dir(root, "fedcba9876543210", 0)) is None
    assert (root / "last").is_dir(), "kept checkpoints survive the next run's start"
    checkpointing.finish_run_dir(root / "fedcba9876543210", keep=False)
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "last", "notes"]


def test_stale_adapter_temp_folders_go_and_a_live_runs_stays(tmp_path: Path) -> None:
    adapter = tmp_path / "models" / "adapter"
    stale = adapter.parent / ".adapter.x1y2z3.tmp"  # what SIGKILL leaves: the temp folder of a process that is gone
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    with atomic_dir(adapter) as live:
        other = subprocess.run(  # another process starting meanwhile (same code as the stage's start)
            [sys.executable, "-c", CLEAN_IN_ANOTHER_PROCESS, str(adapter)],
            capture_output=True,
            text=True,
            env=TRAIN_ENV,
        )
        assert other.returncode == 0, other.stderr
        assert live.is_dir(), "a live run's temp folder is its own"
        assert not stale.exists() and str(stale) in other.stderr
        (live / "weights").write_text("new")
    assert (adapter / "weights").read_text() == "new"
    assert sorted(p.name for p in adapter.parent.iterdir()) == ["adapter"]


CLEAN_IN_ANOTHER_PROCESS = """
import logging, sys
from pathlib import Path
from shaping.io import remove_stale_temp_dirs
logging.basicConfig(level=logging.INFO)
remove_stale_temp_dirs(Path(sys.argv[1]))
"""


def test_resumed_run_counts_only_its_own_tokens_per_second(cfg: Config, tmp_path: Path) -> None:
    cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size = 1, 6, 2
    cfg.train.save_steps, cfg.train.save_total_limit, cfg.train.logging_steps = 3, 2, 1
    rows = [{"messages": d} for d in DIALOGUES * 4]
    ckpt = tmp_path / "ckpt"
    whole = hf_peft.train(cfg, rows, tmp_path / "a", tmp_path / "live-a", ckpt).metrics
    assert whole["steps"] == 6 and whole["tokens"] > 0
    at_3 = json.loads((ckpt / "checkpoint-3" / "trainer_state.json").read_text())["num_input_tokens_seen"]
    assert 0 < at_3 < whole["tokens"]

    shutil.rmtree(ckpt / "checkpoint-6")  # killed after checkpoint 3: the re-run trains steps 4 to 6
    resumed = hf_peft.train(cfg, rows, tmp_path / "b", tmp_path / "live-b", ckpt).metrics
    assert resumed["steps"] == 6 and resumed["resumed_from_step"] == 3
    assert resumed["tokens"] == whole["tokens"], "the whole run's tokens, as if never killed"
    assert resumed["tokens_this_run"] == whole["tokens"] - at_3
    rate = resumed["tokens_this_run"] / resumed["seconds"]
    assert resumed["tokens_per_second"] == pytest.approx(rate, rel=0.01)

    # killed after its last checkpoint: the re-run trains nothing, so it has no speed to report
    done = hf_peft.train(cfg, rows, tmp_path / "c", tmp_path / "live-c", ckpt).metrics
    assert done["resumed_from_step"] == 6 and done["tokens_this_run"] == 0 and done["tokens_per_second"] == 0.0


def test_every_rank_joins_the_process_group_on_the_launchs_device(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("train_stage", REPO / "src" / "train.py")
    assert spec and spec.loader
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr(stage, "pick_device", lambda: "cuda")  # a GPU host
    # accelerate launch with use_cpu (accelerate=cpu, or --cpu): every process on the CPU, over gloo
    assert stage.group_device({"ACCELERATE_USE_CPU": "True"}) == "cpu"
    assert stage.group_device({"ACCELERATE_USE_CPU": "False"}) == "cuda"
    assert stage.group_device({}) == "cuda"
    stage.check_group_device("cpu", "cpu", {"ACCELERATE_USE_CPU": "True"})
    stage.check_group_device("cuda", "auto", {"ACCELERATE_USE_CPU": "False"})
    # rank 0 on gloo, the others on NCCL would hang at the first collective: rank 0 refuses instead
    with pytest.raises(ShapingError, match=r"train.device=cpu .*cuda"):
        stage.check_group_device("cpu", "cpu", {"ACCELERATE_USE_CPU": "False"})
    with pytest.raises(ShapingError, match=r"train.device=auto .*use_cpu"):
        stage.check_group_device("cuda", "auto", {"ACCELERATE_USE_CPU": "True"})


@pytest.mark.slow
def test_dvc_stays_quiet_about_the_checkpoint_folder(smoke_repo_built: Path, tmp_path: Path) -> None:
    """A finished run leaves models/checkpoints (a persist, cache: false out) holding only its README:
    DVC does not warn that the out is empty, and train is up to date after it (only evaluate, which follows
    the re-trained adapter's run record, is stale: a repro would not run train again)."""
    repo = copy_smoke_repo(smoke_repo_built, tmp_path / "repo")
    forced = sh(repo, "dvc", "repro", "--force", "--single-item", "train")
    assert "Running stage 'train'" in forced.stdout
    assert "is empty" not in forced.stdout + forced.stderr, forced.stderr
    assert [p.name for p in (repo / "models" / "checkpoints").iterdir()] == ["README.txt"]
    status = sh(repo, "dvc", "status", "--json")
    assert set(json.loads(status.stdout)) == {"evaluate"} and "is empty" not in status.stderr, status
    again = sh(repo, "dvc", "repro", "train")
    assert "Running stage" not in again.stdout and "is empty" not in again.stdout + again.stderr, again.stdout
