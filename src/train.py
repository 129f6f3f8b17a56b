"""Stage train: LoRA SFT of the base model on the validated split with TRL + PEFT.

    python src/train.py                              # by hand: writes under outputs/<date>/<time>/
    python src/train.py backend=hf_peft lora.r=16    # Hydra overrides
    python src/train.py -m lora.r=8,16,32            # a sweep: one multirun/<...>/<n>/ folder per run
    dvc exp run -S lora.r=16                         # as an experiment: params.yaml, then dvc repro

Writes the adapter and tokenizer to <paths.adapter_dir> and DVCLive metrics to dvclive/train.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from shaping.errors import ShapingError
from shaping.io import atomic_dir, read_jsonl
from shaping.stage import StageContext, run_stage

log = logging.getLogger("shaping.train")

# backend.name -> the module whose train(cfg, rows, output_dir, live_dir) -> TrainingReport runs it
BACKENDS = {"hf_peft": "shaping.training.hf_peft"}


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    if cfg.backend.name not in BACKENDS:
        raise ShapingError(f"backend={cfg.backend.name}: unknown training backend; available: {', '.join(BACKENDS)}")
    if cfg.train.method != "sft":
        raise ShapingError(f"train.method={cfg.train.method}: unknown; available: sft")
    backend = importlib.import_module(BACKENDS[cfg.backend.name])

    train_file = f"{cfg.paths.validated_dir}/train.jsonl"
    rows = read_jsonl(train_file)
    if not rows:
        raise ShapingError(f"{train_file}: no rows to train on")
    ctx.record.backend = cfg.backend.name
    ctx.record.add_inputs([train_file])
    gate = validation_status(Path(cfg.paths.validated_dir) / "report.json")
    live_dir = ctx.out("dvclive/train")
    with atomic_dir(ctx.out(cfg.paths.adapter_dir)) as tmp:
        report = backend.train(cfg, rows, tmp, live_dir)
        shutil.rmtree(tmp / "trainer", ignore_errors=True)  # no checkpoints kept (save_strategy=no)
    ctx.record.details = {**report.metrics, "validation": gate}


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
    run_stage(
        "train",
        sections=["seed", "model", "lora", "backend", "train"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.adapter_dir}/run.json",
    )
