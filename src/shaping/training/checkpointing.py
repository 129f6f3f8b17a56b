"""Resumable training: where checkpoints go, which one to resume from, what happens after a run.

Checkpoints live in `<paths.checkpoint_dir>/<key>/checkpoint-<step>/` (a persistent DVC out, so
`dvc repro` after a kill finds them). The key hashes what the trained weights depend on: the train
stage's params (less the knobs that only change saving, logging or export), the training data and
the base model's content. A run resumes only from checkpoints with its own key, so a finished or
killed experiment never leaks its state into a different one, and the checkpoints of the last few
killed runs of other configs stay, so that each can still resume (`train.keep_unfinished_runs`).
transformers' Trainer restores the rest from a checkpoint: step count, optimizer, LR scheduler,
RNG states and the position in the data order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import xxhash
from dvclive.plots import Metric
from dvclive.utils import standardize_metric_name
from omegaconf import OmegaConf
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import DVCLiveCallback

from shaping.config.schema import Config
from shaping.errors import ShapingError

log = logging.getLogger(__name__)

# what the train stage's result depends on (dvc.yaml's train params)
KEY_SECTIONS = ("seed", "model", "lora", "backend", "train", "accelerate")
# train keys that change where, how often and what is saved or logged, not the trained weights;
# gradient checkpointing recomputes the same activations (the out-of-memory message suggests turning
# it on, and the re-run should then resume)
UNWEIGHTED_TRAIN_KEYS = (
    "save_steps",
    "save_total_limit",
    "keep_checkpoints",
    "keep_unfinished_runs",
    "logging_steps",
    "merge",
    "gradient_checkpointing",
)
# accelerate keys that say where and how the processes meet, not what they compute
UNWEIGHTED_ACCELERATE_KEYS = ("main_process_ip", "main_process_port", "machine_rank", "rdzv_backend", "same_network")
CHECKPOINT_SAVED = "checkpoint saved:"  # the log line of each save (what shaping.runs reads)
LAST = "last"  # where keep_checkpoints=true leaves a finished run's checkpoints
README = "README.txt"
_KEY = re.compile(r"^[0-9a-f]{16}$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# the Trainer writes this file last; a checkpoint without it was cut short by a kill
_COMPLETE_MARKER = "trainer_state.json"
# a stage's own record (times, host) beside a model's files: not part of the model
_NOT_MODEL = ("run.json",)
_CHUNK = 1 << 24

README_TEXT = """\
Resumable checkpoints of the train stage (src/train.py); a DVC out with persist: true and
cache: false, so `dvc repro` after a kill finds them, and DVC never caches them.

<key>/checkpoint-<step>/  a run's saved state, every train.save_steps steps. <key> hashes the params
                          that change the weights, the training data and the base model's content:
                          running the same experiment again resumes from its newest checkpoint.
last/                     a finished run's checkpoints, with train.keep_checkpoints=true.

A finished run deletes its own folder. The folders of the train.keep_unfinished_runs most recent
killed runs of other experiments stay, so each resumes when it is run again; older ones are deleted
when a run starts. Delete a <key> folder (or all of them) to drop a killed run's state by hand.
This file is rewritten at every start; it also keeps DVC from warning that the out is empty.
"""


def checkpoint_key(cfg: Config, data_sha256: str) -> str:
    """A short hash of the params that change the weights, the training data (its SHA-256) and the
    base model's content."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    chosen = {name: container.get(name) for name in KEY_SECTIONS}
    train = container["train"]
    assert isinstance(train, dict)
    chosen["train"] = {k: v for k, v in train.items() if k not in UNWEIGHTED_TRAIN_KEYS}
    accelerate = container.get("accelerate") or {}
    assert isinstance(accelerate, dict)
    # not launched, the accelerate section is not read; launched, num_processes sets the global batch
    launched = cfg.train.launcher == "accelerate"
    chosen["accelerate"] = (
        {k: v for k, v in accelerate.items() if k not in UNWEIGHTED_ACCELERATE_KEYS} if launched else None
    )
    if cfg.train.method == "distill":  # the teacher's spec shapes the weights too (its prompt file: by path)
        chosen["teacher"] = (container.get("models") or {}).get(cfg.train.teacher)
    chosen["data"] = data_sha256
    chosen["base"] = base_identity(cfg.model.name_or_path)
    blob = json.dumps(chosen, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def base_identity(name_or_path: str) -> str:
    """A local base model by its files' names and content (xxh3-128: about as fast as the disk
    reads, and the model load that follows reads the same bytes again from the page cache), so
    a `dvc checkout`, a restore from DVC's cache or a `touch` leaves it the same model; a hub id
    by name (its revision is in the params)."""
    local = Path(name_or_path)
    if not local.is_dir():
        return name_or_path
    digest = xxhash.xxh3_128()
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name not in _NOT_MODEL):
        digest.update(path.relative_to(local).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def claim_run_dir(root: Path, key: str, keep_unfinished: int) -> Path:
    """`root/key`, created. Of the other runs' unfinished checkpoints under `root` (killed runs of
    other configs or data), the `keep_unfinished` most recently written stay, so that each resumes
    when run again; older ones are deleted. Writes the folder's README. Main process only."""
    if keep_unfinished < 0:
        raise ShapingError(f"train.keep_unfinished_runs={keep_unfinished}: must be 0 or more")
    root.mkdir(parents=True, exist_ok=True)
    (root / README).write_text(README_TEXT, encoding="utf-8")
    others = [p for p in root.iterdir() if p.is_dir() and _KEY.match(p.name) and p.name != key]
    for empty in [p for p in others if not _resumable(p)]:  # a run that failed or was killed before its first save
        log.info("deleting %s: a run's folder with no checkpoint to resume from", empty)
        shutil.rmtree(empty)
        others.remove(empty)
    others.sort(key=_last_written, reverse=True)
    for stale in others[keep_unfinished:]:
        log.info(
            "deleting %s: checkpoints of an older killed run of another config or dataset "
            "(train.keep_unfinished_runs=%d keeps the newest %d)",
            stale,
            keep_unfinished,
            keep_unfinished,
        )
        shutil.rmtree(stale)
    for kept in others[:keep_unfinished]:
        log.info("keeping %s: a killed run of another config or dataset, resumed when it runs again", kept)
    run_dir = root / key
    run_dir.mkdir(exist_ok=True)
    return run_dir


def _resumable(run_dir: Path) -> bool:
    """Whether a run folder holds state to resume from: a complete checkpoint (hf_peft), or the
    record of saved states (backend=tinker's checkpoints.jsonl)."""
    return any(run_dir.glob(f"checkpoint-*/{_COMPLETE_MARKER}")) or (run_dir / "checkpoints.jsonl").is_file()


def _last_written(run_dir: Path) -> float:
    """When a run folder last changed: a new checkpoint or a rotated-out one changes the folder's mtime."""
    return max([run_dir.stat().st_mtime, *(p.stat().st_mtime for p in run_dir.iterdir())])


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
        if not state.log_history or not state.is_world_process_zero:  # a fresh run, or not the writing rank
            return
        # what DVCLiveCallback.on_log logs, without its next_step() per entry: each sync re-reads every
        # plot file, so syncing per replayed step grows with the square of the history; one sync at the end
        for entry in state.log_history:
            self.live.step = int(entry["step"])
            for key, value in entry.items():
                if key != "step" and Metric.could_log(value):
                    self.live.log_metric(standardize_metric_name(key, "dvclive.huggingface"), value)
        self.live.sync()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.live.step = state.global_step

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # DVCLiveCallback.on_log ends with next_step(): an evaluation logged at the same step as the
        # training loss (train.eval_steps a multiple of train.logging_steps) must not land one step later
        self.live.step = state.global_step


class RunStart(TrainerCallback):
    """Where this run started: step and tokens seen, restored from the checkpoint it resumed (0 and
    0 for a fresh run), so that its report can tell this run's work from the whole run's. Logs each
    checkpoint it saves (`checkpoint saved: <folder> (step N)`: the runs service's checkpoint.saved)."""

    def __init__(self) -> None:
        self.step = 0
        self.tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.step, self.tokens = state.global_step, int(state.num_input_tokens_seen)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
            log.info("%s %s (step %d)", CHECKPOINT_SAVED, folder, state.global_step)
