"""Stage pretrain: train a small LM from scratch, evaluate its validation perplexity, sample it.

    python src/pretrain.py                                         # by hand: writes under outputs/<date>/<time>/
    python src/pretrain.py model=char-lstm model.pretrain.steps=100
    dvc exp run -S model=gpt2-tiny pretrain                        # as DVC runs it: tokenizer + pretrain only
    dvc exp run -S model=char-lstm -S model.pretrain.steps=600 pretrain

Any `model.architecture.family` (llama, gpt2, char-lstm) on the tokenizer stage's tokenizer
(char-lstm: its own character vocabulary) and the same seeded corpus split. The run folder
(model.pretrain_dir) holds the best model by validation loss with its tokenizer,
checkpoints/step-N (the newest keep_checkpoints of those saved every checkpoint_interval steps),
samples.jsonl (greedy continuations of held-out prompts) and manifest.json (config, versions, seed,
device, durations, artifacts).

Resumable: while it trains, each checkpoint is a resumable state in
<paths.pretrain_checkpoint_dir>/<key>/step-N/ (a persistent DVC out; <key> hashes the seed, the
architecture, the model.pretrain keys that change the weights and the token streams). Killed and run
again with the same config, it resumes from the newest complete one and ends with the same weights
and evaluation curve as an uninterrupted run; a finished run deletes its folder, and a run of another
config deletes the states of killed runs of other configs.
metrics/pretrain.json (validation perplexity first -> last, samples/s, time) and the
validation curve metrics/pretrain_evals.json are what `dvc exp show` / `dvc plots` compare.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from shaping.errors import ShapingError
from shaping.io import atomic_dir, remove_stale_temp_dirs, write_json, write_jsonl
from shaping.scratch.corpus import Corpus, load_corpus, split_corpus
from shaping.scratch.families import CharTokenizer, get_family
from shaping.scratch.generation import generate
from shaping.scratch.pretraining import STATE_FILE, Codec, complete_states, encode_streams, pretrain, run_key, vocab_of
from shaping.scratch.tokenizer import load_tokenizer_dir
from shaping.stage import StageContext, run_stage
from shaping.tracking import library_versions

log = logging.getLogger("shaping.pretrain")
README = "README.txt"
README_TEXT = """\
Resumable states of the pretrain stage (src/pretrain.py); a DVC out with persist: true and
cache: false, so `dvc repro` after a kill finds them, and DVC never caches them.

<key>/step-<N>/  a running or killed run's state every model.pretrain.checkpoint_interval steps: the
                 model's files, then state.pt (optimizer, RNG, evaluations so far), written last.
                 <key> hashes the seed, the architecture, the model.pretrain keys that change the
                 weights and the token streams: the same run again resumes from its newest state.

A finished run deletes its folder; a run of another config deletes the other keys' folders.
This file is rewritten at every start; it also keeps DVC from warning that the out is empty.
"""
_KEY = re.compile(r"^[0-9a-f]{16}$")


def claim_run_dir(root: Path, key: str) -> Path:
    """`root/key`, created; the folders of other keys (killed runs of other configs) are deleted."""
    root.mkdir(parents=True, exist_ok=True)
    (root / README).write_text(README_TEXT, encoding="utf-8")
    for other in sorted(p for p in root.iterdir() if p.is_dir() and _KEY.match(p.name) and p.name != key):
        log.info("deleting %s: the states of a killed run of another config", other)
        shutil.rmtree(other)
    return root / key


def sample_prompts(holdout: Corpus, tokenizer: Codec, count: int) -> list[tuple[str, str]]:
    """(kind, prompt): alternately the opening words of a held-out document and a held-out user turn."""
    prose = [("prose", " ".join(text.split()[:6])) for text in holdout.prose]
    chat = [
        ("chat", str(tokenizer.apply_chat_template(d[:1], tokenize=False, add_generation_prompt=True)))
        for d in holdout.dialogues
        if d[0].get("role") == "user"
    ]
    mixed = [p for pair in zip(prose, chat, strict=False) for p in pair] + prose[len(chat) :] + chat[len(prose) :]
    return mixed[:count]


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    model_cfg = cfg.model
    out = ctx.out(model_cfg.pretrain_dir)
    metrics_dir = ctx.out(cfg.paths.metrics_dir)
    states_root = ctx.out(cfg.paths.pretrain_checkpoint_dir)
    if not model_cfg.from_scratch:
        states_root.mkdir(parents=True, exist_ok=True)  # the declared out exists: its README
        (states_root / README).write_text(README_TEXT, encoding="utf-8")
        with atomic_dir(out) as tmp:
            write_json(
                tmp / "manifest.json", {"skipped": f"model={model_cfg.name} is a hub model: nothing to pretrain"}
            )
        write_json(metrics_dir / "pretrain.json", {})
        write_json(metrics_dir / "pretrain_evals.json", [])
        log.info("hub model %s: nothing to pretrain", model_cfg.name_or_path)
        return
    arch, pcfg = model_cfg.architecture, model_cfg.pretrain
    if arch is None or pcfg is None:
        raise ShapingError("model.architecture and model.pretrain are required when model.from_scratch=true")
    family = get_family(arch.family)
    ctx.record.backend = family.name
    ctx.record.add_inputs([cfg.tokenizer.corpus])
    t_start = time.perf_counter()

    train, holdout = split_corpus(load_corpus(cfg.tokenizer.corpus), cfg.tokenizer.holdout_fraction, cfg.seed)
    tokenizer: Codec
    if family.char_level:
        tokenizer = CharTokenizer.from_texts(train.texts())
        tokenizer_source = "characters of the training split"
    else:
        tokenizer = load_tokenizer_dir(cfg.tokenizer.out_dir)
        tokenizer_source = cfg.tokenizer.out_dir
    prose_ids, dialogue_ids, starts = encode_streams(tokenizer, train.prose, train.dialogues)
    held_prose, held_dialogues, _ = encode_streams(tokenizer, holdout.prose, holdout.dialogues)
    log.info(
        "%s: %d train tokens, %d held-out tokens, vocab %d (%s)",
        family.name,
        len(prose_ids) + len(dialogue_ids),
        len(held_prose) + len(held_dialogues),
        len(tokenizer),
        tokenizer_source,
    )
    torch.manual_seed(cfg.seed)
    model = family.build(arch, vocab_of(tokenizer))
    key = run_key(arch, pcfg, cfg.seed, len(tokenizer), prose_ids, dialogue_ids, starts, held_prose + held_dialogues)
    run_dir = claim_run_dir(states_root, key)
    remove_stale_temp_dirs(out)  # a killed run's half-written model folder

    def save_files(current: torch.nn.Module, folder: Path) -> None:
        family.save(current, folder)
        tokenizer.save_pretrained(folder)

    with atomic_dir(out) as tmp:
        report = pretrain(
            model,
            prose_ids,
            dialogue_ids,
            starts,
            pcfg,
            cfg.seed,
            eval_ids=held_prose + held_dialogues,
            checkpoint_dir=run_dir,
            save_files=save_files,
        )
        family.save(model, tmp)
        tokenizer.save_pretrained(tmp)
        # the newest keep_checkpoints states' model files (the killed part of a resumed run's included)
        for _, folder in complete_states(run_dir)[-pcfg.keep_checkpoints :] if pcfg.keep_checkpoints > 0 else []:
            shutil.copytree(folder, tmp / "checkpoints" / folder.name, ignore=shutil.ignore_patterns(STATE_FILE))

        t_samples = time.perf_counter()
        samples = []
        for kind, prompt in sample_prompts(holdout, tokenizer, pcfg.sample_prompts):
            result = generate(model, tokenizer, prompt, max_new_tokens=pcfg.sample_max_new_tokens, temperature=0.0)[0]
            samples.append({"kind": kind, "prompt": prompt, **asdict(result)})
        write_jsonl(tmp / "samples.jsonl", samples)
        sample_seconds = time.perf_counter() - t_samples

        evals = report.evals
        metrics = {
            "family": family.name,
            "parameters": report.parameters,
            "steps": report.steps,
            "train_loss": report.final_loss,
            "eval_perplexity_first": evals[0]["eval_perplexity"],
            "eval_perplexity_last": evals[-1]["eval_perplexity"],
            "eval_loss": report.best_eval_loss,
            "eval_perplexity": round(math.exp(report.best_eval_loss or 0.0), 3),
            "best_step": report.best_step,
            "resumed_from_step": report.resumed_from_step,
            "samples_per_second": report.samples_per_second,
            "tokens_per_second": report.tokens_per_second,
            "train_seconds": report.seconds,
            "vocab_size": len(tokenizer),
            "train_tokens": len(prose_ids) + len(dialogue_ids),
        }
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "family": family.name,
            "config": {"model": asdict(model_cfg), "tokenizer": asdict(cfg.tokenizer)},
            "seed": cfg.seed,
            "tokenizer": tokenizer_source,
            "device": report.device,
            "precision": report.precision,
            "precision_reason": report.precision_reason,
            "batch_size": report.batch_size,
            "dataloader": {"num_workers": report.num_workers, "pin_memory": report.pin_memory},
            "versions": library_versions(),
            "durations": {
                "train_s": report.seconds,
                "samples_s": round(sample_seconds, 2),
                "total_s": round(time.perf_counter() - t_start, 2),
            },
            "metrics": metrics,
            "evals": evals,
            "artifacts": [*files, "manifest.json"],
        }
        write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the next run of this config starts afresh
    write_json(metrics_dir / "pretrain.json", {"pretrain": metrics})
    write_json(metrics_dir / "pretrain_evals.json", evals)
    ctx.record.details = {"pretrain": metrics}
    log.info(
        "validation perplexity %.2f -> %.2f (best %.2f at step %s)",
        metrics["eval_perplexity_first"],
        metrics["eval_perplexity_last"],
        metrics["eval_perplexity"],
        report.best_step,
    )


if __name__ == "__main__":
    run_stage(
        "pretrain",
        sections=["seed", "tokenizer", "model"],
        body=main,
        record_at=lambda cfg: f"{cfg.model.pretrain_dir}/run.json",
    )
