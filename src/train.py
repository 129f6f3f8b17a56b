"""Stage train: LoRA SFT of the base model on the validated split with TRL + PEFT.

    python src/train.py                              # by hand: writes under outputs/<date>/<time>/
    python src/train.py backend=hf_peft lora.r=16    # Hydra overrides
    python src/train.py -m lora.r=8,16,32            # a sweep: one multirun/<...>/<n>/ folder per run
    dvc exp run -S lora.r=16                         # as an experiment: params.yaml, then dvc repro
    dvc exp run -S train.launcher=accelerate -S accelerate=fsdp -S accelerate.num_processes=8
    accelerate launch --config_file conf/accelerate/multi_gpu.yaml src/train.py   # the same, by hand

Writes the adapter and tokenizer to <paths.adapter_dir>, DVCLive metrics to dvclive/train (the loss
on <paths.validated_dir>/eval.jsonl too, every train.eval_steps steps), and
checkpoints every train.save_steps steps to <paths.checkpoint_dir>/<key>/: run it again after a
kill and it resumes from the newest one. With SHAPING_CHECKPOINT_DIR set, checkpoints go there
instead (the runs service sets it for DVC's queue, whose runs each get a fresh workspace, so that a
cancelled run's re-submission resumes; <paths.checkpoint_dir> then holds its README only). Under a
multi-process launcher every process runs this script; rank 0 is the stage and the others train
alongside it, writing nothing of their own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.utils import str_to_bool

from shaping.device import check_liger, pick_device, resolve_device, resolve_precision
from shaping.errors import ShapingError
from shaping.io import atomic_dir, read_jsonl, remove_stale_temp_dirs
from shaping.stage import CHECKPOINT_DIR_ENV, StageContext, run_stage
from shaping.training import checkpointing, launch

if TYPE_CHECKING:
    from shaping.config import Config
    from shaping.training.hf_peft import TrainingReport

log = logging.getLogger("shaping.train")

BACKENDS = ("hf_peft", "tinker")
EVAL_LOSS_TSV = "eval/loss.tsv"  # DVCLive's file for the Trainer's eval_loss (dvc.yaml's eval-loss plot)


def load_backend(name: str) -> Callable[..., TrainingReport]:
    """backend.name's train(cfg, rows, output_dir, live_dir, checkpoint_dir) -> TrainingReport, imported when
    chosen (peft, trl and the Tinker SDK are heavy)."""
    if name == "tinker":
        from shaping.integrations.tinker import training as tinker

        return tinker.train
    from shaping.training import hf_peft

    return hf_peft.train


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    if cfg.backend.name not in BACKENDS:
        raise ShapingError(f"backend={cfg.backend.name}: unknown training backend; available: {', '.join(BACKENDS)}")
    if cfg.train.method not in ("sft", "dpo", "kto", "grpo", "orpo", "distill"):
        raise ShapingError(f"train.method={cfg.train.method}: unknown; available: sft, dpo, kto, grpo, orpo, distill")
    device = resolve_device(cfg.train.device)
    if cfg.train.liger:
        check_liger(device)
    if launch.relaunch_needed(cfg):
        run_under_accelerate(ctx)
        return
    train = load_backend(cfg.backend.name)

    train_file = f"{cfg.paths.validated_dir}/train.jsonl"
    rows = read_jsonl(train_file)
    if not rows:
        raise ShapingError(f"{train_file}: no rows to train on")
    eval_rows = read_eval_rows(cfg, train_file)
    ctx.record.backend = cfg.backend.name
    data_files = [train_file, *([eval_file(train_file)] if eval_rows is not None else [])]
    ctx.record.add_inputs(data_files)
    if cfg.train.method == "distill":  # the teacher's system prompt is an input of the run
        from shaping.training.distill import teacher_system_prompt

        _, prompt_file = teacher_system_prompt(cfg)
        if prompt_file:
            ctx.record.add_inputs([prompt_file])
    gate = validation_status(Path(cfg.paths.validated_dir) / "report.json")
    # what the weights depend on: the training rows, and the eval rows where they choose (early stopping, keep_best)
    key = checkpointing.checkpoint_key(cfg, "+".join(ctx.record.inputs[Path(f).as_posix()] for f in data_files))
    declared = ctx.out(cfg.paths.checkpoint_dir)
    root = Path(os.environ.get(CHECKPOINT_DIR_ENV) or declared)
    if root != declared:  # the declared out still exists, as DVC expects of it
        declared.mkdir(parents=True, exist_ok=True)
        (declared / checkpointing.README).write_text(checkpointing.README_TEXT, encoding="utf-8")
    checkpoints = checkpointing.claim_run_dir(root, key, keep_unfinished=cfg.train.keep_unfinished_runs)
    if launch.world_size() > 1:
        check_group_device(device, cfg.train.device, os.environ)
    launch.share_plan(launch.TrainPlan(cfg, train_file, checkpoints), device)
    live_dir = ctx.out("dvclive/train")
    adapter_dir = ctx.out(cfg.paths.adapter_dir)
    remove_stale_temp_dirs(adapter_dir)
    with atomic_dir(adapter_dir) as tmp:
        report = train(cfg, rows, tmp, live_dir, checkpoints, **({"eval_rows": eval_rows} if eval_rows else {}))
    launch.wait_for_everyone()  # the other ranks may still write their part of the last checkpoint
    checkpointing.finish_run_dir(checkpoints, keep=cfg.train.keep_checkpoints)
    eval_curve = live_dir / "plots" / "metrics" / EVAL_LOSS_TSV
    if not eval_curve.is_file():  # train.eval_steps=0: an empty curve, which `dvc plots show` draws without an error
        eval_curve.parent.mkdir(parents=True, exist_ok=True)
        eval_curve.write_text("step\tloss\n", encoding="utf-8")
    ctx.record.details = {**report.metrics, "validation": gate}


def train_alongside() -> None:
    """A rank other than 0: train on rank 0's plan; what this rank writes goes to a scratch folder
    (the Trainer itself writes this rank's share of each checkpoint to the shared folder)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = launch.share_plan(None, group_device(os.environ))
    train = load_backend(plan.cfg.backend.name)
    rows = read_jsonl(plan.train_file)
    eval_rows = read_eval_rows(plan.cfg, plan.train_file)
    extra = {"eval_rows": eval_rows} if eval_rows else {}
    with tempfile.TemporaryDirectory(prefix="shaping-rank-") as scratch:
        train(plan.cfg, rows, Path(scratch) / "adapter", Path(scratch) / "live", plan.checkpoint_dir, **extra)
    launch.wait_for_everyone()


def eval_file(train_file: str) -> str:
    return str(Path(train_file).with_name("eval.jsonl"))  # validate writes the two splits side by side


def read_eval_rows(cfg: Config, train_file: str) -> list[dict[str, Any]] | None:
    """The validated eval split, when train.eval_steps > 0 evaluates on it (None otherwise)."""
    t = cfg.train
    if cfg.backend.name != "hf_peft":
        for key, off in (("eval_steps", 0), ("early_stopping_patience", 0), ("keep_best", False)):
            if getattr(t, key) != off:
                raise ShapingError(
                    f"train.{key}={getattr(t, key)}: evaluation while training is a backend=hf_peft feature; "
                    f"set train.{key}={str(off).lower()} with backend={cfg.backend.name}"
                )
    if t.eval_steps <= 0:
        return None
    path = eval_file(train_file)
    if not Path(path).is_file():
        raise ShapingError(f"train.eval_steps={cfg.train.eval_steps}: {path} is missing; run the validate stage")
    rows = read_jsonl(path)
    if not rows:
        raise ShapingError(f"train.eval_steps={cfg.train.eval_steps}: {path} has no rows to evaluate on")
    return rows


def group_device(env: Mapping[str, str]) -> str:
    """The device a rank makes its process group for (gloo on cpu, NCCL on cuda) before it has rank 0's
    plan, decided from what every rank has alike: the launch (accelerate's use_cpu or --cpu put every
    process on the CPU) and the machine. Rank 0 checks that its train.device agrees (check_group_device),
    so that every rank trains on the plan's device and joins the same kind of group."""
    if str_to_bool(env.get("ACCELERATE_USE_CPU", "false")):
        return "cpu"
    return pick_device()


def check_group_device(device: str, requested: str, env: Mapping[str, str]) -> None:
    """Rank 0: refuse a train.device the other ranks cannot know of (they would wait on NCCL while rank 0
    waits on gloo, or the reverse, until the launcher's timeout)."""
    others = group_device(env)
    if device != others:
        how = "accelerate's use_cpu (or --cpu)" if others == "cpu" else "a launch without use_cpu on this machine"
        raise ShapingError(
            f"train.device={requested} ({device}) under {how}, which puts every process on {others}: "
            f"set train.device={others}, or launch {'without' if others == 'cpu' else 'with'} use_cpu"
        )


def run_under_accelerate(ctx: StageContext) -> None:
    """Start this script again under `accelerate launch`; its rank 0 writes the outputs and a run
    record, whose details this process's record takes over."""
    cfg = ctx.cfg
    if ctx.by_hand:  # Hydra: the same overrides, and the same run folder for every rank
        from hydra.core.hydra_config import HydraConfig

        args = [*HydraConfig.get().overrides.task, f"hydra.run.dir={ctx.out_root}"]
    else:
        args = sys.argv[1:]
    precision, _ = resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
    code = launch.relaunch_train(cfg, precision, Path(__file__).resolve(), args)
    record = ctx.out(cfg.paths.adapter_dir) / "run.json"
    child = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    if code != 0:
        reason = child.get("error") or "see the log above"
        raise ShapingError(f"training under accelerate launch failed (exit {code}): {reason}")
    ctx.record.backend = child.get("backend")
    ctx.record.inputs = child.get("inputs", {})
    ctx.record.details = {**child.get("details", {}), "launcher": "accelerate"}


def validation_status(report: Path) -> dict[str, Any]:
    """What the gate said about the data being trained on; a skipped gate is shouted about."""
    if not report.is_file():
        return {"report": None}
    saved = json.loads(report.read_text(encoding="utf-8"))
    status = {"passed": saved.get("passed"), "skipped_validation": saved.get("skipped_validation", False)}
    if status["skipped_validation"]:
        log.warning("TRAINING ON DATA THAT FAILED VALIDATION (validation.skip=true): see %s", report)
    return status


if __name__ == "__main__":
    if launch.process_rank() != 0:  # the one rank-0 guard: outputs, DVCLive and the run record are rank 0's
        train_alongside()
        sys.exit(0)
    run_stage(
        "train",
        sections=["seed", "model", "lora", "backend", "train", "accelerate", "models"],  # models: distill's teacher
        body=main,
        record_at=lambda cfg: f"{cfg.paths.adapter_dir}/run.json",
    )
