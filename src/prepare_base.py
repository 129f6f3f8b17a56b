"""Stage prepare_base: the base model every later stage tunes and compares against.

    python src/prepare_base.py                                # by hand: writes under outputs/<date>/<time>/
    python src/prepare_base.py model.pretrain.steps=100 model.tokenizer.vocab_size=2048
    dvc repro prepare_base                                    # as DVC runs it: --params params.yaml

model.from_scratch=true (model=tiny): train a byte-level BPE tokenizer and a small Llama on
paths.corpus_dir. A hub model (model=qwen2.5-0.5b-instruct): write only a reference file
(id + revision), never the weights, so DVC tracks which model without copying it.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from shaping.io import atomic_dir, write_json
from shaping.stage import StageContext, run_stage
from shaping.training.scratch import build_model, encode_streams, load_corpus, pretrain
from shaping.training.tokenizer import train_bpe_tokenizer

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
    assert model_cfg.architecture and model_cfg.tokenizer and model_cfg.pretrain, "tiny model config"
    ctx.record.backend = "scratch"
    ctx.record.add_inputs([cfg.paths.corpus_dir])
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    prose, dialogues = load_corpus(cfg.paths.corpus_dir)
    log.info("corpus: %d paragraphs, %d dialogues", len(prose), len(dialogues))
    rendered = [m["content"] for d in dialogues for m in d]
    tokenizer = train_bpe_tokenizer(prose + rendered, model_cfg.tokenizer.vocab_size, model_cfg.tokenizer.min_frequency)
    prose_ids, dialogue_ids, starts = encode_streams(tokenizer, prose, dialogues)
    model = build_model(model_cfg.architecture, tokenizer)
    report = pretrain(model, prose_ids, dialogue_ids, starts, model_cfg.pretrain, cfg.seed)

    with atomic_dir(base_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    metrics = {
        "pretrain": {
            **vars(report),
            "vocab_size": len(tokenizer),
            "corpus_tokens": len(prose_ids) + len(dialogue_ids),
        }
    }
    write_json(Path(ctx.out(cfg.paths.metrics_dir)) / "prepare_base.json", metrics)
    ctx.record.details = metrics


if __name__ == "__main__":
    run_stage(
        "prepare_base",
        sections=["seed", "model"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.base_dir}/run.json",
    )
