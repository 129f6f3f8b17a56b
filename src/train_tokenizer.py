"""Stage tokenizer: train the from-scratch tokenizer and measure it on a seeded holdout.

    python src/train_tokenizer.py                                  # by hand: writes under outputs/<date>/<time>/
    python src/train_tokenizer.py tokenizer=sentencepiece_unigram tokenizer.vocab_size=8000
    dvc exp run -S tokenizer=sentencepiece_bpe tokenizer          # as DVC runs it, this stage only

tokenizer.method: bpe (byte-level, HF tokenizers) | sentencepiece_unigram | sentencepiece_bpe.
Writes the tokenizer (transformers files, plus tokenizer.model for SentencePiece) and
tokenizer_manifest.json (config, corpus split, training time, holdout stats) to
tokenizer.out_dir, and the holdout stats as DVC metrics. A hub model (from_scratch=false)
brings its own tokenizer: the stage records that and trains nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from shaping.io import atomic_dir, write_json
from shaping.scratch.corpus import corpus_files, load_corpus, split_corpus
from shaping.scratch.tokenizer import save_tokenizer, tokenizer_stats, train_tokenizer
from shaping.stage import StageContext, run_stage
from shaping.tracking import library_versions

log = logging.getLogger("shaping.tokenizer")


def sentencepiece_agreement(model: bytes, tokenizer_ids: list[list[int]], texts: list[str]) -> float:
    """Share of texts the exported fast tokenizer encodes exactly as SentencePiece itself does."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    same = sum(1 for text, ids in zip(texts, tokenizer_ids, strict=True) if sp.encode(text) == ids)
    return round(same / max(1, len(texts)), 4)


def main(ctx: StageContext) -> None:
    cfg, tok = ctx.cfg, ctx.cfg.tokenizer
    out = ctx.out(tok.out_dir)
    metrics_file = ctx.out(cfg.paths.metrics_dir) / "tokenizer.json"
    if not cfg.model.from_scratch:
        with atomic_dir(out) as tmp:
            write_json(tmp / "tokenizer_manifest.json", {"skipped": f"model={cfg.model.name} brings its own tokenizer"})
        write_json(metrics_file, {})
        log.info("hub model %s: no tokenizer to train", cfg.model.name_or_path)
        return
    ctx.record.backend = tok.method
    ctx.record.add_inputs([tok.corpus])
    train, holdout = split_corpus(load_corpus(tok.corpus), tok.holdout_fraction, cfg.seed)
    texts = train.texts()
    trained = train_tokenizer(tok, texts, cfg.seed)
    stats = tokenizer_stats(trained.tokenizer, holdout.texts(), {ch for text in texts for ch in text})
    if trained.sentencepiece_model is not None:
        held = holdout.texts()
        ids = trained.tokenizer(held, add_special_tokens=False)["input_ids"]
        stats["sentencepiece_agreement"] = sentencepiece_agreement(trained.sentencepiece_model, ids, held)
    training = {
        "seconds": round(trained.seconds, 3),
        "train_bytes": trained.train_bytes,
        "mb_per_second": round(trained.train_bytes / 1e6 / trained.seconds, 3),
        "threads": tok.threads,
    }
    with atomic_dir(out) as tmp:
        files = save_tokenizer(trained, tmp)
        manifest = {
            "method": tok.method,
            "config": asdict(tok),
            "seed": cfg.seed,
            "corpus": {
                "files": [str(f) for f in corpus_files(tok.corpus)],
                "train_documents": len(train.prose) + len(train.dialogues),
                "holdout_documents": len(holdout.prose) + len(holdout.dialogues),
            },
            "training": training,
            "holdout": stats,
            "versions": library_versions() | {"sentencepiece": _sentencepiece_version()},
            "artifacts": [*files, "tokenizer_manifest.json"],
        }
        write_json(tmp / "tokenizer_manifest.json", manifest)
    write_json(metrics_file, {"tokenizer": {**stats, "train_mb_per_second": training["mb_per_second"]}})
    ctx.record.details = {"holdout": stats, "training": training}
    log.info(
        "holdout: %.3f tokens/char, %.3f tokens/word, coverage %.4f",
        stats["tokens_per_char"],
        stats["tokens_per_word"],
        stats["coverage"],
    )


def _sentencepiece_version() -> str:
    import sentencepiece

    return str(sentencepiece.__version__)


if __name__ == "__main__":
    run_stage(
        "tokenizer",
        sections=["seed", "tokenizer", "model"],
        body=main,
        record_at=lambda cfg: f"{cfg.tokenizer.out_dir}/run.json",
    )
