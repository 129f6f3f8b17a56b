"""From-scratch throughput: training samples/s per model family on CPU, and tokenizer training MB/s.

    python bench/scratch_throughput.py [--steps 20] [--repeats 2] [--threads 0]

One run, one corpus (data/corpus, the tokenizer stage's training split): trains BPE (HF
tokenizers) and SentencePiece unigram/BPE tokenizers and reports MB of training text per
second; then trains GPT-2 tiny, the char-LSTM and the default tiny Llama for `--steps` steps
each with their conf/model settings (batch, block) on the CPU, alternating families between
repeats, and reports samples/s (one sample = one block_size window) and tokens/s. Medians.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from common import demo_corpus

from shaping.config import compose
from shaping.scratch.corpus import split_corpus
from shaping.scratch.families import CharTokenizer, get_family
from shaping.scratch.pretraining import encode_streams, pretrain, vocab_of
from shaping.scratch.tokenizer import train_tokenizer

TOKENIZERS = ["bpe", "sentencepiece_unigram", "sentencepiece_bpe"]
MODELS = ["gpt2-tiny", "char-lstm", "tiny"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="tokenizer training threads (0 = every core)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = compose([f"tokenizer.threads={args.threads}"])
    train, _ = split_corpus(demo_corpus(base.tokenizer.corpus), base.tokenizer.holdout_fraction, base.seed)
    texts = train.texts()
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6

    speeds: dict[str, list[float]] = {m: [] for m in TOKENIZERS}
    trained = {}
    for _ in range(args.repeats):
        for method in TOKENIZERS:
            cfg = compose([f"tokenizer={method}", f"tokenizer.threads={args.threads}"]).tokenizer
            result = train_tokenizer(cfg, texts, seed=base.seed)
            speeds[method].append(megabytes / result.seconds)
            trained[method] = result.tokenizer

    samples: dict[str, list[float]] = {m: [] for m in MODELS}
    tokens: dict[str, list[float]] = {m: [] for m in MODELS}
    shapes: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in MODELS:
            cfg = compose([f"model={name}", f"model.pretrain.steps={args.steps}", "model.pretrain.device=cpu"])
            arch, pcfg = cfg.model.architecture, cfg.model.pretrain
            assert arch is not None and pcfg is not None
            family = get_family(arch.family)
            tokenizer = CharTokenizer.from_texts(texts) if family.char_level else trained["bpe"]
            prose, dialogue, starts = encode_streams(tokenizer, train.prose, train.dialogues)
            torch.manual_seed(0)
            model = family.build(arch, vocab_of(tokenizer))
            report = pretrain(model, prose, dialogue, starts, pcfg, seed=0)
            samples[name].append(report.samples_per_second)
            tokens[name].append(report.tokens_per_second)
            shapes[name] = f"{report.parameters / 1e6:.2f}M params, batch {report.batch_size} x {pcfg.block_size}"

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"corpus training split {megabytes:.2f} MB; {args.repeats} repeats"
    )
    print("\n| tokenizer (vocab 4096) | MB/s (median) | runs |")
    print("|---|---|---|")
    for method in TOKENIZERS:
        runs = ", ".join(f"{s:.2f}" for s in speeds[method])
        print(f"| {method} | {statistics.median(speeds[method]):.2f} | {runs} |")
    print(f"\n| model ({args.steps} steps, CPU, fp32) | shape | samples/s (median) | tokens/s | runs |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        runs = ", ".join(f"{s:.1f}" for s in samples[name])
        print(
            f"| {name} | {shapes[name]} | {statistics.median(samples[name]):.1f} | "
            f"{statistics.median(tokens[name]):.0f} | {runs} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
