"""Checkpoints and resume: a train stage killed mid-run and run again ends where an uninterrupted run does."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shaping.config import Config
from shaping.training import checkpointing

from .conftest import REPO
from .test_train_launch import RANK_LINE, TRAIN_ENV, run_train, stage_params


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
    assert (straight / "models" / "checkpoints").is_dir(), "the DVC out stays, empty"

    params = stage_params(cfg, killed, rows=24)
    running = subprocess.Popen(
        [sys.executable, str(REPO / "src" / "train.py"), "--params", str(params)],
        cwd=killed,
        env=TRAIN_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not [s for s in complete_checkpoints(killed) if s >= 20] and time.monotonic() < deadline:
        assert running.poll() is None, "training ended before the kill; make the run longer"
        time.sleep(0.01)
    running.send_signal(signal.SIGKILL)
    running.wait()
    saved = complete_checkpoints(killed)
    assert saved and max(saved) < 100, saved
    assert not (killed / "models" / "adapter").exists()

    proc = run_train(killed, params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"checkpoint-{max(saved)} (step {max(saved)})" in proc.stderr
    weights, losses = final_state(killed)
    # DVCLive's curve of the resumed run is the whole run's: the checkpoint's history replayed, then the rest
    assert [step for step, _ in losses] == [step for step, _ in expected_losses] == list(range(1, 101))
    torch.testing.assert_close(
        [loss for _, loss in losses], [loss for _, loss in expected_losses], rtol=1e-4, atol=1e-5
    )
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected_weights[name], rtol=1e-4, atol=1e-6)


def test_checkpoint_key_follows_params_data_and_base(cfg: Config, tmp_path: Path) -> None:
    key = checkpointing.checkpoint_key(cfg, "a" * 64)
    assert key == checkpointing.checkpoint_key(cfg, "a" * 64)
    assert key != checkpointing.checkpoint_key(cfg, "b" * 64), "other training data: another key"
    cfg.train.save_steps, cfg.train.keep_checkpoints = 7, True
    assert key == checkpointing.checkpoint_key(cfg, "a" * 64), "how often state is saved is not part of the key"
    cfg.train.learning_rate *= 2
    assert key != checkpointing.checkpoint_key(cfg, "a" * 64)
    cfg.train.learning_rate /= 2
    (Path(cfg.model.name_or_path) / "config.json").touch()  # a rebuilt base model (new mtime)
    assert key != checkpointing.checkpoint_key(cfg, "a" * 64)


def test_checkpoint_folder_lifecycle(cfg: Config, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    other = root / "0123456789abcdef" / "checkpoint-5"
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text("{}")
    run_dir = checkpointing.claim_run_dir(root, "fedcba9876543210")
    assert not other.parent.exists(), "another config's checkpoints are never resumed, so they go"
    assert checkpointing.resume_checkpoint(run_dir) is None

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
    assert checkpointing.resume_checkpoint(checkpointing.claim_run_dir(root, "fedcba9876543210")) is None
    assert (root / "last").is_dir(), "kept checkpoints survive the next run's start"
    checkpointing.finish_run_dir(root / "fedcba9876543210", keep=False)
    assert sorted(p.name for p in root.iterdir()) == ["last"]


@pytest.mark.slow
def test_killed_two_process_run_stops_its_workers_and_resumes(cfg: Config, tmp_path: Path) -> None:
    """SIGKILL to the stage process under train.launcher=accelerate: torchrun's workers (in sessions
    of their own) must stop too, not train on as orphans; the re-run resumes on both ranks. (That
    the resumed DDP run then equals an uninterrupted one was checked by hand: identical weights.)"""
    cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size = 1, 100, 2
    cfg.train.learning_rate, cfg.train.logging_steps, cfg.train.save_steps = 1e-2, 1, 20
    cfg.train.launcher = "accelerate"
    params = stage_params(cfg, tmp_path, rows=24)
    running = subprocess.Popen(
        [sys.executable, str(REPO / "src" / "train.py"), "--params", str(params)],
        cwd=tmp_path,
        env=TRAIN_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not [s for s in complete_checkpoints(tmp_path) if s >= 40] and time.monotonic() < deadline:
        assert running.poll() is None, "training ended before the kill; make the run longer"
        time.sleep(0.01)
    running.send_signal(signal.SIGKILL)
    running.wait()
    time.sleep(10)  # the launcher gets SIGTERM from the kernel and stops the workers
    left = subprocess.run(["pgrep", "-f", str(params)], capture_output=True, text=True).stdout.split()
    assert left == [], "workers left training after the stage process was killed"
    assert not (tmp_path / "models" / "adapter").exists()
    saved = max(complete_checkpoints(tmp_path))

    proc = run_train(tmp_path, params)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert log.count(f"checkpoint-{saved} (step {saved})") == 2, "both ranks resume from the same checkpoint"
    ranks = {int(m[0]): m for m in RANK_LINE.findall(log)}
    assert {r[2] for r in ranks.values()} == {"100"} and ranks[0][3] == ranks[1][3]
    _, losses = final_state(tmp_path)
    assert [step for step, _ in losses] == list(range(1, 101))
