"""train.launcher=accelerate: the train stage re-runs itself under `accelerate launch`, here two
CPU processes joined over gloo (DDP), on the session's tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from shaping.config import Config
from shaping.device import check_liger, resolve_attn_implementation
from shaping.errors import ShapingError
from shaping.io import write_jsonl
from shaping.training import launch

from .conftest import DIALOGUES, REPO

# One thread per process: on the test model's tiny matrices a second OpenMP thread only adds
# synchronisation, and on shared cores it spins against other work (60 steps: 57 s, 2 s with one)
TRAIN_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
RANK_LINE = re.compile(r"rank (\d) of (\d): step (\d+), trainable-parameter checksum (\S+)")


def stage_params(cfg: Config, root: Path, rows: int) -> Path:
    """A params file for `src/train.py --params`, every path under `root`, `rows` training rows."""
    cfg.paths.validated_dir = str(root / "data" / "validated")
    cfg.paths.adapter_dir = str(root / "models" / "adapter")
    cfg.paths.checkpoint_dir = str(root / "models" / "checkpoints")
    write_jsonl(Path(cfg.paths.validated_dir) / "train.jsonl", [{"messages": d} for d in DIALOGUES * (rows // 3)])
    params = root / "params.yaml"
    params.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")
    return params


def run_train(root: Path, params: Path, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "src" / "train.py"), "--params", str(params), *overrides],
        cwd=root,
        env=TRAIN_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_accelerate_config_is_one_clear_error(cfg: Config, tmp_path: Path) -> None:
    cfg.accelerate["num_proceses"] = 2
    with pytest.raises(ShapingError, match=r"accelerate.*num_proceses"):
        launch.launch_command(cfg, "fp32", REPO / "src" / "train.py", [], tmp_path / "a.yaml")
    cfg.train.launcher = "deepspeed"
    with pytest.raises(ShapingError, match=r"train\.launcher='deepspeed'"):
        launch.relaunch_needed(cfg)


def accelerate_config(tmp_path: Path, name: str, **changes: object) -> object:
    """accelerate's own parse of conf/accelerate/<name>.yaml with `changes` applied."""
    from accelerate.commands.config.config_args import load_config_from_file

    settings = {**OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "accelerate" / f"{name}.yaml")), **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(OmegaConf.to_yaml(settings), encoding="utf-8")
    return load_config_from_file(str(path))


def test_gpu_launches_are_refused_where_accelerate_would_quietly_run_something_else(tmp_path: Path) -> None:
    """accelerate runs plain DDP on the CPU when asked for FSDP on a machine without GPUs, or with
    use_cpu: each such launch is one error before any process starts. `gpus` is the CUDA device count."""
    fsdp, multi = accelerate_config(tmp_path, "fsdp"), accelerate_config(tmp_path, "multi_gpu")
    for config, name in ((fsdp, "fsdp"), (multi, "multi_gpu")):
        with pytest.raises(ShapingError, match=rf"accelerate={name} .*needs CUDA GPUs and this machine has none"):
            launch.check_target(config, "auto", gpus=0)
        with pytest.raises(ShapingError, match=rf"train\.device=cpu with accelerate={name}"):
            launch.check_target(config, "cpu", gpus=2)
        launch.check_target(config, "auto", gpus=2)
    with pytest.raises(ShapingError, match=r"accelerate\.num_processes=8 with accelerate=fsdp: .* 2 visible"):
        launch.check_target(accelerate_config(tmp_path, "fsdp", num_processes=8), "cuda", gpus=2)
    with pytest.raises(ShapingError, match=r"accelerate\.use_cpu=true with accelerate=fsdp"):
        launch.check_target(accelerate_config(tmp_path, "fsdp", use_cpu=True), "auto", gpus=0)
    launch.check_target(accelerate_config(tmp_path, "cpu"), "cpu", gpus=0)
    launch.check_target(accelerate_config(tmp_path, "deepspeed_zero3"), "auto", gpus=0)  # DeepSpeed runs on CPU
    with pytest.raises(ShapingError, match=r"train\.device=cpu with accelerate=deepspeed_zero3"):
        launch.check_target(accelerate_config(tmp_path, "deepspeed_zero3"), "cpu", gpus=1)


def test_launch_command_passes_precision_and_a_free_port(cfg: Config, tmp_path: Path) -> None:
    cmd = launch.launch_command(cfg, "bf16", REPO / "src" / "train.py", ["--params", "p.yaml"], tmp_path / "a.yaml")
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16"
    assert int(cmd[cmd.index("--main_process_port") + 1]) > 0
    assert cmd[-3:] == [str(REPO / "src" / "train.py"), "--params", "p.yaml"]
    assert OmegaConf.load(tmp_path / "a.yaml")["num_processes"] == 2


def test_attention_and_liger_choices() -> None:
    has_flash = importlib.util.find_spec("flash_attn") is not None
    assert resolve_attn_implementation("auto", "cpu", torch.float32)[0] == "sdpa"
    assert resolve_attn_implementation("auto", "cuda", torch.float32)[0] == "sdpa", "flash-attn needs 16-bit weights"
    assert resolve_attn_implementation("auto", "cuda", torch.bfloat16)[0] == (
        "flash_attention_2" if has_flash else "sdpa"
    )
    assert resolve_attn_implementation("eager", "cpu", torch.float32) == ("eager", "set in model.attn_implementation")
    if not has_flash:
        with pytest.raises(ShapingError, match=r"model\.attn_implementation=flash_attention_2.*not installed"):
            resolve_attn_implementation("flash_attention_2", "cuda", torch.bfloat16)
    with pytest.raises(ShapingError, match=r"train\.liger=true"):
        check_liger("cpu")  # not installed here, or installed but no GPU: refused either way


@pytest.mark.slow
def test_hand_run_relaunches_into_its_own_hydra_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`python src/train.py train.launcher=accelerate ...` (Hydra): every rank gets the parent's run
    folder, and the parent's run record takes over rank 0's figures."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    write_jsonl(tmp_path / "data" / "validated" / "train.jsonl", [{"messages": d} for d in DIALOGUES * 4])
    overrides = [
        "+experiment=smoke",
        f"model.name_or_path={tiny_model_dir}",
        "train.launcher=accelerate",
        "train.max_steps=2",
        "train.batch_size=2",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "train.py"), *overrides],
        cwd=tmp_path,
        env=TRAIN_ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    ranks = {int(m[0]): m for m in RANK_LINE.findall(log)}
    assert set(ranks) == {0, 1} and ranks[0][3] == ranks[1][3], log[-4000:]
    (out,) = (tmp_path / "outputs").glob("*/*")  # outputs/<date>/<time>: one folder for all three processes
    record = json.loads((out / "models" / "adapter" / "run.json").read_text())
    assert record["exit_status"] == "success" and record["details"]["launcher"] == "accelerate"
    assert record["details"]["steps"] == 2
    assert (out / "models" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "models").exists(), "a hand run writes under its Hydra folder only"


@pytest.mark.slow
def test_ddp_trains_in_step_and_a_killed_zero3_run_resumes_to_where_ddp_ends(cfg: Config, tmp_path: Path) -> None:
    """Two CPU processes joined over gloo (DDP) train in step. Then accelerate=deepspeed_zero3 on two CPU
    processes (DeepSpeed's CPU accelerator, gloo): parameters, gradients and AdamW's state partitioned
    across the ranks, the adapter gathered from the partitions when saved. SIGKILLed after a checkpoint,
    its workers (torchrun's, in sessions of their own) must stop too, not train on as orphans; run again,
    it must end with the weights and per-step losses of the uninterrupted DDP run on the same data (fp32:
    the same sums, in another order)."""
    from .test_train_resume import complete_checkpoints, final_state, kill_after_checkpoint

    cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size = 1, -1, 2
    cfg.train.learning_rate, cfg.train.logging_steps, cfg.train.save_steps = 1e-2, 1, 4
    cfg.train.launcher = "accelerate"
    cfg.train.precision = "fp32"  # auto is bf16 on a CPU with AMX, where the two sum orders differ by ~1e-4
    ddp, zero3 = tmp_path / "ddp", tmp_path / "zero3"
    proc = run_train(ddp, stage_params(cfg, ddp, rows=48))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    ranks = {int(m[0]): m for m in RANK_LINE.findall(log)}
    assert set(ranks) == {0, 1}, log[-4000:]
    # 48 rows, 2 per process per step, 2 processes: 12 steps (one process alone would take 24). Each rank
    # saw other rows, so equal weights after training mean their gradients were all-reduced.
    assert {r[2] for r in ranks.values()} == {"12"}
    assert ranks[0][3] == ranks[1][3]
    record = json.loads((ddp / "models" / "adapter" / "run.json").read_text())
    assert record["exit_status"] == "success" and record["details"]["launcher"] == "accelerate"
    assert record["details"]["steps"] == 12 and record["inputs"]
    expected_weights, expected_losses = final_state(ddp)
    assert [step for step, _ in expected_losses] == list(range(1, 13))
    assert expected_losses[-1][1] < expected_losses[0][1]
    # rank 1 wrote nothing of its own: the adapter, DVCLive logs and checkpoint folder are rank 0's
    assert sorted(p.name for p in ddp.iterdir()) == ["data", "dvclive", "models", "params.yaml"]
    assert sorted(p.name for p in (ddp / "models").iterdir()) == ["adapter", "checkpoints"]

    pytest.importorskip("deepspeed", reason="accelerate=deepspeed_zero3 needs the deepspeed extra (in .[dev])")
    cfg.accelerate = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "accelerate" / "deepspeed_zero3.yaml"))
    params = stage_params(cfg, zero3, rows=48)
    kill_after_checkpoint(zero3, params, settle_s=0)
    deadline = time.monotonic() + 30  # the launcher gets SIGTERM from the kernel and stops its workers
    while left := subprocess.run(["pgrep", "-f", str(params)], capture_output=True, text=True).stdout.split():
        assert time.monotonic() < deadline, f"workers {left} left training after the stage process was killed"
        time.sleep(0.5)
    saved = max(complete_checkpoints(zero3))
    assert saved < 12 and not (zero3 / "models" / "adapter").exists()

    proc = run_train(zero3, params)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert log.count(f"checkpoint-{saved} (step {saved})") == 2, "both ranks resume from the same checkpoint"
    weights, losses = final_state(zero3)
    assert [step for step, _ in losses] == [step for step, _ in expected_losses]
    torch.testing.assert_close(
        [loss for _, loss in losses], [loss for _, loss in expected_losses], rtol=1e-4, atol=1e-5
    )
    assert weights.keys() == expected_weights.keys()
    # gathered whole, not one rank's empty partition; reduce-scatter sums in another order than DDP's
    # all-reduce, so a few weights differ by 3e-6 to 2e-5 after 12 steps, by where the kill fell (a lost
    # optimizer state: ~1e-3)
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected_weights[name], rtol=1e-3, atol=1e-4)
