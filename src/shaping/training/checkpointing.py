"""Resumable training: where checkpoints go, which one to resume from, what happens after a run.

Checkpoints live in `<paths.checkpoint_dir>/<key>/checkpoint-<step>/` (a persistent DVC out, so
`dvc repro` after a kill finds them). The key hashes everything the run's result depends on:
the train stage's params (less the checkpointing knobs), the training data and the base model.
A run resumes only from checkpoints with its own key, so a finished or killed experiment never
leaks its state into a different one. transformers' Trainer restores the rest from a checkpoint:
step count, optimizer, LR scheduler, RNG states and the position in the data order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import DVCLiveCallback

from shaping.config.schema import Config

log = logging.getLogger(__name__)

# what the train stage's result depends on (dvc.yaml's train params)
KEY_SECTIONS = ("seed", "model", "lora", "backend", "train", "accelerate")
# train keys that change where and how often state is saved, not the trained weights
CHECKPOINT_KEYS = ("save_steps", "save_total_limit", "keep_checkpoints", "logging_steps")
LAST = "last"  # where keep_checkpoints=true leaves a finished run's checkpoints
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# the Trainer writes this file last; a checkpoint without it was cut short by a kill
_COMPLETE_MARKER = "trainer_state.json"


def checkpoint_key(cfg: Config, data_sha256: str) -> str:
    """A short hash of the params, the training data (its SHA-256) and the base model's files."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    chosen = {name: container.get(name) for name in KEY_SECTIONS}
    train = container["train"]
    assert isinstance(train, dict)
    chosen["train"] = {k: v for k, v in train.items() if k not in CHECKPOINT_KEYS}
    chosen["data"] = data_sha256
    chosen["base"] = _base_identity(cfg.model.name_or_path)
    blob = json.dumps(chosen, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _base_identity(name_or_path: str) -> str:
    """A local base model by its files' names, sizes and mtimes (a rebuilt base is another model;
    hashing gigabytes of weights at every start would cost minutes); a hub id by name (its
    revision is in the params)."""
    local = Path(name_or_path)
    if not local.is_dir():
        return name_or_path
    stats = sorted(
        (p.relative_to(local).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in local.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256(repr(stats).encode()).hexdigest()


def claim_run_dir(root: Path, key: str) -> Path:
    """`root/key`, created; other runs' unfinished checkpoints under `root` are deleted (a different
    config or data: never resumed, and DVC would hash them after every run). Main process only."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in (key, LAST)):
        log.info("deleting checkpoints of another config or dataset: %s", stale)
        shutil.rmtree(stale)
    run_dir = root / key
    run_dir.mkdir(exist_ok=True)
    return run_dir


def checkpoint_args(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Trainer arguments (TrainingArguments / SFTConfig / DPOConfig) that save resumable checkpoints
    into `run_dir` every `train.save_steps` steps (none when 0)."""
    steps = cfg.train.save_steps
    return {
        "output_dir": str(run_dir),
        "save_strategy": "steps" if steps > 0 else "no",
        "save_steps": max(steps, 1),  # the Trainer validates it even when saving is off
        "save_total_limit": cfg.train.save_total_limit,
        "save_only_model": False,  # optimizer, scheduler and RNG states too: what resuming needs
    }


def resume_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint in `run_dir`, or None to start from step 0."""
    if not run_dir.is_dir():
        return None
    found = []
    for path in run_dir.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            if (path / _COMPLETE_MARKER).is_file():
                found.append((int(match.group(1)), path))
            else:
                log.warning("ignoring %s: cut short while it was written", path)
    if not found:
        return None
    step, newest = max(found)
    log.info("resuming from %s (step %d)", newest, step)
    return str(newest)


def finish_run_dir(run_dir: Path, keep: bool) -> None:
    """After a finished run: delete its checkpoints, or with `keep` move them to `<root>/last`
    (replacing the previous ones) so that the next run with the same key starts from step 0
    instead of "resuming" a run that is already over. Main process only, after every rank is done."""
    if not run_dir.exists():
        return
    if not keep:
        shutil.rmtree(run_dir)
        return
    last = run_dir.parent / LAST
    if last.exists():
        shutil.rmtree(last)
    run_dir.rename(last)
    log.info("checkpoints kept in %s (train.keep_checkpoints=true)", last)


class DVCLiveResume(TrainerCallback):
    """DVCLive numbers its steps itself, from 0. This pins them to the trainer's global step and,
    on a resumed run, replays the checkpoint's log history first, so the plots of a killed and
    resumed run read like one uninterrupted run's. Goes after `dvclive` in the callback list."""

    def __init__(self, dvclive: DVCLiveCallback) -> None:
        if dvclive.live is None:
            raise ValueError("DVCLiveResume needs a DVCLiveCallback made with live=Live(...)")
        self.dvclive = dvclive
        self.live = dvclive.live

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        for entry in state.log_history:  # empty unless resumed from a checkpoint
            self.live.step = int(entry["step"])
            logs = {k: v for k, v in entry.items() if k != "step"}
            self.dvclive.on_log(args, state, control, logs=logs, **kwargs)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.live.step = state.global_step
