"""Stage prepare_base: the base model every later stage tunes and compares against.

    python src/prepare_base.py                    # by hand: writes under outputs/<date>/<time>/
    dvc repro prepare_base                        # as DVC runs it: --params params.yaml

The gate between the from-scratch stages (tokenizer -> pretrain) and fine-tuning. For a
from-scratch model it copies the pretrain run's best model and tokenizer (not its
checkpoints) to paths.base_dir, which train/evaluate load with AutoModelForCausalLM. LoRA
needs a transformers model, so a family that is not one (char-lstm) stops here with a
message. A hub model (model=qwen2.5-0.5b-instruct): write only a reference file (id +
revision), never the weights, so DVC tracks which model without copying it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from shaping.errors import ShapingError
from shaping.io import atomic_dir, write_json
from shaping.scratch.families import get_family
from shaping.stage import StageContext, run_stage

log = logging.getLogger("shaping.prepare_base")


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    model_cfg = cfg.model
    base_dir = ctx.out(cfg.paths.base_dir)
    if not model_cfg.from_scratch:
        reference = {"name_or_path": model_cfg.name_or_path, "revision": model_cfg.revision}
        with atomic_dir(base_dir) as tmp:
            write_json(tmp / "reference.json", reference)
        log.info("hub model: wrote reference %s", reference)
        return
    if model_cfg.architecture is None:
        raise ShapingError("model.architecture is required when model.from_scratch=true")
    family = get_family(model_cfg.architecture.family)
    if not family.is_transformers:
        raise ShapingError(
            f"model={model_cfg.name} (architecture.family={family.name}) is not a transformers model, so it "
            "cannot be a fine-tuning base (LoRA and the train/evaluate stages need one). Run only the "
            f"from-scratch stages: `dvc exp run -S model={model_cfg.name} pretrain`, then "
            f"`python src/generate.py {model_cfg.pretrain_dir} --prompt ...`"
        )
    source = Path(model_cfg.pretrain_dir)
    if not (source / "config.json").is_file():
        raise ShapingError(f"{source}: no pretrained model there; run `dvc repro pretrain` first")
    ctx.record.backend = "scratch"
    ctx.record.add_inputs([source])
    with atomic_dir(base_dir) as tmp:
        for file in sorted(source.iterdir()):
            if file.is_file() and file.name != "run.json":  # the pretrain run's own record stays with it
                shutil.copy2(file, tmp / file.name)
    ctx.record.details = {"source": str(source), "family": family.name}
    log.info("base model: %s (%s) -> %s", source, family.name, base_dir)


if __name__ == "__main__":
    run_stage(
        "prepare_base",
        sections=["model"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.base_dir}/run.json",
    )
