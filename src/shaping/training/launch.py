"""Multi-process training: re-run the train stage under `accelerate launch`, and share one plan.

`train.launcher=accelerate` makes the train stage start itself again under
`python -m accelerate.commands.launch --config_file <the accelerate section> src/train.py ...`,
with the resolved train.precision as accelerate's mixed precision and a free port for the
processes to meet on. Every process runs the script; rank 0 is the stage (it reads the config,
writes the adapter, DVCLive logs, checkpoints' shared files and the run record) and hands the
others its plan over the process group, so every rank trains on exactly the config rank 0 read.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from shaping.config.schema import Config
from shaping.errors import ShapingError

log = logging.getLogger(__name__)

LAUNCHERS = ("none", "accelerate")
# accelerate's mixed_precision for each resolved train.precision
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class TrainPlan:
    """What rank 0 decided, sent to every other rank before training."""

    cfg: Config
    train_file: str
    checkpoint_dir: Path


def process_rank() -> int:
    """This process's global rank under torchrun/accelerate or mpirun; 0 when launched plainly."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0)


def world_size() -> int:
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def under_launcher() -> bool:
    """True inside `accelerate launch` (it sets ACCELERATE_MIXED_PRECISION for its processes) or torchrun."""
    return "LOCAL_RANK" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ


def relaunch_needed(cfg: Config) -> bool:
    if cfg.train.launcher not in LAUNCHERS:
        raise ShapingError(f"train.launcher={cfg.train.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    return cfg.train.launcher == "accelerate" and not under_launcher()


def launch_command(cfg: Config, precision: str, script: Path, script_args: list[str], config_file: Path) -> list[str]:
    """The `accelerate launch` command line for `script`; writes the accelerate section to `config_file`."""
    from accelerate.commands.config.config_args import load_config_from_file

    settings = dict(cfg.accelerate)
    if not settings:
        raise ShapingError("train.launcher=accelerate needs an accelerate config: choose accelerate=cpu|multi_gpu|...")
    config_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    try:  # accelerate's own check: unknown keys, bad values
        loaded = load_config_from_file(str(config_file))
    except (ValueError, TypeError) as err:
        raise ShapingError(f"accelerate (conf/accelerate/, -S accelerate.<key>): {err}") from None
    check_target(loaded, cfg.train.device, cuda_devices())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    cmd += ["--mixed_precision", MIXED_PRECISION[precision]]
    if loaded.num_machines <= 1 and not settings.get("main_process_port"):
        # torchrun's default port (29500) collides with any other run on this machine
        cmd += ["--main_process_port", str(free_port())]
    return [*cmd, str(script), *script_args]


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_target(loaded: Any, device: str, gpus: int) -> None:
    """Refuse, before any process starts, what accelerate would otherwise get wrong quietly or deep
    in a worker: FSDP or multi_gpu on a machine without GPUs (accelerate falls back to plain DDP on
    the CPU and says nothing), more processes than GPUs, DeepSpeed not installed, and a CPU
    train.device under a GPU config. `loaded` is accelerate's parsed config, `gpus` the CUDA devices."""
    from accelerate.utils import DistributedType

    kind = loaded.distributed_type
    name = {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed_zero3"}.get(kind, "multi_gpu")
    if kind not in (DistributedType.FSDP, DistributedType.MULTI_GPU, DistributedType.DEEPSPEED):
        return
    if kind == DistributedType.DEEPSPEED and importlib.util.find_spec("deepspeed") is None:
        raise ShapingError(
            "accelerate=deepspeed_zero3 (distributed_type: DEEPSPEED) needs DeepSpeed, which is not installed: "
            "pip install -e '.[deepspeed]'"
        )
    if loaded.use_cpu and kind != DistributedType.MULTI_GPU:  # MULTI_GPU + use_cpu is accelerate=cpu
        raise ShapingError(
            f"accelerate.use_cpu=true with accelerate={name}: accelerate would run plain DDP instead; on the CPU "
            "use accelerate=cpu (DDP), or accelerate=deepspeed_zero3 with use_cpu=false (DeepSpeed finds no GPU "
            "and runs on the CPU)"
        )
    if loaded.use_cpu:
        return
    if gpus == 0:
        if kind == DistributedType.DEEPSPEED:  # DeepSpeed's CPU accelerator over gloo: tested, slow
            log.info("DeepSpeed on the CPU (no GPU here): %d processes over gloo", loaded.num_processes)
            return
        raise ShapingError(
            f"accelerate={name} (distributed_type: {kind.value}) needs CUDA GPUs and this machine has none "
            "(accelerate would run plain DDP on the CPU without saying so): use accelerate=cpu for several CPU "
            "processes, or run on a GPU machine"
        )
    if device == "cpu":
        raise ShapingError(
            f"train.device=cpu with accelerate={name}, a GPU launch: use accelerate=cpu, or train.device=auto"
        )
    if loaded.num_processes > gpus:
        raise ShapingError(
            f"accelerate.num_processes={loaded.num_processes} with accelerate={name}: one process per GPU, and "
            f"{gpus} visible (-S accelerate.num_processes={gpus}, or set CUDA_VISIBLE_DEVICES)"
        )


def relaunch(cmd: list[str]) -> int:
    """Run `cmd` (from launch_command) to its end; its processes log to this one's stdout/stderr.

    torchrun starts the workers in sessions of their own, so a signal to this process group does
    not reach them: the launcher has to stop them. It does on SIGTERM, which it gets when this
    process is interrupted, and (Linux) when this process dies, even by SIGKILL."""
    log.info("launching: %s", " ".join(cmd))
    process = subprocess.Popen(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        return process.wait()
    except BaseException:  # Ctrl-C, SIGTERM as an exception: stop the launcher, which stops its workers
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def _die_with_parent() -> None:
    """In the launcher, before exec: ask the kernel for SIGTERM when its parent (this process) dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def relaunch_train(cfg: Config, precision: str, script: Path, script_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="shaping-accelerate-") as tmp:
        return relaunch(launch_command(cfg, precision, script, script_args, Path(tmp) / "accelerate.yaml"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def share_plan(plan: TrainPlan | None, device: str) -> TrainPlan:
    """Rank 0's `plan` on every rank (others pass None). Initialises the process group as the
    Trainer will (same backend: gloo on CPU, NCCL on GPUs), so the Trainer reuses it."""
    if world_size() == 1:
        if plan is None:
            raise RuntimeError("share_plan: a single process must pass its plan")
        return plan
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState(cpu=device == "cpu")
    box: list[Any] = [plan]
    broadcast_object_list(box, from_process=0)
    shared = box[0]
    assert isinstance(shared, TrainPlan)
    return shared


def wait_for_everyone() -> None:
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


class RankReport(TrainerCallback):
    """Logs each rank's end state: under DDP every rank must hold the same weights, and the
    checksum of the trainable parameters shows at a glance that they do (under FSDP and ZeRO-3
    each rank sums its own shard, so the figures differ there)."""

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if model is None:
            return
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
        log.info(
            "rank %d of %d: step %d, trainable-parameter checksum %.10e",
            args.process_index,
            args.world_size,
            state.global_step,
            checksum,
        )
