"""Train-stage throughput: one config trained several ways in one run; tokens/s and peak memory.

    python bench/train_throughput.py                  # CPU: the `tiny` architecture, train.max_length
    python bench/train_throughput.py --gpu            # GPU: Qwen2.5-0.5B and Llama-3.1-8B shapes, seq 2048, MFU
    python bench/train_throughput.py --steps 20 --repeats 3

Each setting runs the real train-stage code (hf_peft.train: TRL SFTTrainer + PEFT LoRA) for the
same number of steps in its own process (so peak memory is that setting's), settings alternating
within each repeat; the table gives the median. Models are built from config dicts with random
weights (no hub, no `make demo`): throughput does not depend on the weights' values. Training
rows are the corpus's dialogues joined into conversations of spread lengths (short to
max_length), so that padding has something to waste and packing something to gain.

tokens/s counts non-padding tokens over the wall time of trainer.train(). Peak memory is the
process's peak RSS on CPU, torch.cuda.max_memory_allocated on GPU. On GPU, MFU is the model FLOPs
of the parameter matmuls (4 x frozen + 6 x trainable parameters per token: frozen weights need no
weight gradients; attention's T^2 term left out, so it is a lower bound) over the GPU's bf16
matmul rate measured here. Settings:
  TRL defaults      padded batches, bf16 autocast, gradient checkpointing (SFTConfig's defaults)
  precision auto    what train.precision=auto and gradient_checkpointing=auto pick (CPU only: on a
                    GPU auto *is* bf16 + checkpointing)
  packing           train.packing=true: rows packed into max_length sequences, no padding
  packing + Liger   train.liger=true as well (fused RMSNorm/RoPE/SwiGLU/linear-cross-entropy);
                    needs liger-kernel and CUDA, skipped otherwise
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from common import demo_corpus

from shaping.config import compose
from shaping.device import cpu_has_native_bf16, pick_device
from shaping.io import read_jsonl, write_jsonl
from shaping.training import hf_peft

PADDED = {"train.packing": "false"}
PACKED = {"train.packing": "true"}
CPU_SETTINGS = {
    "TRL defaults (padded, bf16 + grad ckpt)": {
        **PADDED,
        "train.precision": "bf16",
        "train.gradient_checkpointing": "true",
    },
    "padded, precision auto": {**PADDED, "train.precision": "auto", "train.gradient_checkpointing": "auto"},
    "packing, precision auto": {**PACKED, "train.precision": "auto", "train.gradient_checkpointing": "auto"},
    "packing + Liger, precision auto": {**PACKED, "train.precision": "auto", "train.liger": "true"},
}
TRL_DEFAULTS = {"train.precision": "bf16", "train.gradient_checkpointing": "true"}
GPU_SETTINGS = {
    "TRL defaults (padded, bf16 + grad ckpt)": {**PADDED, **TRL_DEFAULTS},
    "packing": {**PACKED, **TRL_DEFAULTS},
    "packing + Liger": {**PACKED, **TRL_DEFAULTS, "train.liger": "true"},
}
# Public architecture shapes (the models' config.json), built here with random weights
GPU_MODELS: dict[str, dict[str, Any]] = {
    "Qwen2.5-0.5B": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "batch_size": 8,
    },
    "Llama-3.1-8B": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "batch_size": 2,
    },
}
GPU_SEQ = 2048
GPU_LORA = ["lora.r=16", "lora.alpha=32"]


def liger_skip_reason() -> str | None:
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel not installed"
    if not torch.cuda.is_available():
        return "no CUDA (Liger's Triton kernels need a GPU)"
    return None


def build_rows(max_length: int, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` conversations made of corpus dialogues, lengths spread from one dialogue up to
    about max_length tokens (~0.23 tokens per character with the project's BPE-4096)."""
    dialogues = demo_corpus().dialogues
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        budget = rng.uniform(0.1, 1.0) * max_length / 0.23
        messages: list[dict[str, str]] = []
        while sum(len(m["content"]) for m in messages) < budget:
            messages.extend(rng.choice(dialogues))
        rows.append({"messages": messages})
    return rows


def build_tokenizer(folder: Path) -> Any:
    from shaping.scratch.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(demo_corpus().texts(), vocab_size=4096)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_cpu_model(folder: Path) -> None:
    """The `tiny` model config's architecture (conf/model/tiny.yaml), random weights."""
    from shaping.scratch.pretraining import build_model

    tokenizer = build_tokenizer(folder)
    arch = compose([]).model.architecture
    assert arch is not None
    torch.manual_seed(0)
    build_model(arch, tokenizer).save_pretrained(folder)


def build_gpu_model(name: str, folder: Path) -> dict[str, Any]:
    """`name`'s architecture with random bf16 weights, initialised on the GPU; our tokenizer's ids
    (< 4096) are valid ids of the full-size vocabulary, so the LM head costs what it costs."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = {k: v for k, v in GPU_MODELS[name].items() if k != "batch_size"}
    config = AutoConfig.for_model(**shape)
    build_tokenizer(folder)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return shape


def matmul_tflops(n: int = 8192, iters: int = 50) -> float:
    """The GPU's measured dense bf16 matmul rate (TFLOP/s): the denominator of MFU."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def matmul_flops_per_token(model_dir: Path, lora_r: int) -> tuple[float, int, int]:
    """(FLOPs per trained token, frozen matmul params, LoRA params) for LoRA on every linear layer."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = d // c.num_attention_heads * c.num_key_value_heads
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]  # q k v o gate up down
    frozen = layers * sum(i * o for i, o in shapes) + d * c.vocab_size  # + LM head
    lora = layers * sum(lora_r * (i + o) for i, o in shapes)
    return 4.0 * frozen + 6.0 * lora, frozen, lora


def worker(spec: dict[str, Any]) -> None:
    """One setting, in its own process: prints one JSON line of figures."""
    logging.basicConfig(level=logging.WARNING)
    cfg = compose([f"{k}={v}" for k, v in spec["overrides"].items()] + spec["extra"])
    cfg.model.name_or_path = spec["model_dir"]
    rows = read_jsonl(spec["rows"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        report = hf_peft.train(cfg, rows, Path(tmp) / "adapter", Path(tmp) / "live")
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    m = report.metrics
    print(json.dumps({**m, "peak_mib": peak_mib, "resolved": f"{m['precision']}, ckpt={m['gradient_checkpointing']}"}))


def run_setting(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"setting {spec['overrides']} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def measure(
    settings: dict[str, dict[str, str]], common: dict[str, Any], repeats: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    skip = liger_skip_reason()
    skipped = {name: skip for name, o in settings.items() if o.get("train.liger") == "true" and skip}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings if name not in skipped}
    for _ in range(repeats):
        for name in runs:
            runs[name].append(run_setting({**common, "overrides": settings[name]}))
    return runs, {name: str(reason) for name, reason in skipped.items()}


def print_table(
    runs: dict[str, list[dict[str, Any]]],
    skipped: dict[str, str],
    baseline: str,
    flops_per_token: float | None = None,
    peak_tflops: float | None = None,
) -> None:
    mfu_head = " MFU |" if flops_per_token else ""
    print(
        f"| setting | resolved | tokens/s (median) | runs | x {baseline.split(' (')[0]} | peak memory MiB |{mfu_head}"
    )
    print("|---|---|---|---|---|---|" + ("---|" if flops_per_token else ""))
    base = statistics.median(r["tokens_per_second"] for r in runs[baseline])
    for name, results in runs.items():
        tps = statistics.median(r["tokens_per_second"] for r in results)
        peak = max(r["peak_mib"] for r in results)
        each = ", ".join(f"{r['tokens_per_second']:.0f}" for r in results)
        mfu = ""
        if flops_per_token and peak_tflops:
            mfu = f" {100 * tps * flops_per_token / (peak_tflops * 1e12):.1f}% |"
        print(f"| {name} | {results[0]['resolved']} | {tps:.0f} | {each} | {tps / base:.2f} | {peak:.0f} |{mfu}")
    for name, reason in skipped.items():
        print(f"| {name} | skipped: {reason} | | | | |" + (" |" if flops_per_token else ""))


def cpu_main(steps: int, repeats: int) -> int:
    cfg = compose([])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, rows_file = Path(tmp) / "model", Path(tmp) / "rows.jsonl"
        build_cpu_model(model_dir)
        write_jsonl(rows_file, build_rows(cfg.train.max_length, 512, cfg.seed))
        common = {"model_dir": str(model_dir), "rows": str(rows_file), "extra": [f"train.max_steps={steps}"]}
        runs, skipped = measure(CPU_SETTINGS, common, repeats)
    print(
        f"device {pick_device()} ({os.cpu_count()} cores), native CPU bf16 (AMX): {cpu_has_native_bf16()}, "
        f"tiny architecture, LoRA r={cfg.lora.r}, {steps} steps x batch {cfg.train.batch_size} x "
        f"max_length {cfg.train.max_length}, {repeats} repeats, torch {torch.__version__}"
    )
    print_table(runs, skipped, "TRL defaults (padded, bf16 + grad ckpt)")
    return 0


def gpu_main(steps: int, repeats: int, models: list[str]) -> int:
    if not torch.cuda.is_available():
        print(
            "error: --gpu needs a CUDA GPU, and torch sees none here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); run without --gpu for the CPU figures",
            file=sys.stderr,
        )
        return 2
    peak = matmul_tflops()
    print(f"{torch.cuda.get_device_name()}: measured dense bf16 matmul {peak:.0f} TFLOP/s, torch {torch.__version__}")
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir, rows_file = Path(tmp) / "model", Path(tmp) / "rows.jsonl"
            build_gpu_model(name, model_dir)
            write_jsonl(rows_file, build_rows(GPU_SEQ, 2048, 0))
            batch = GPU_MODELS[name]["batch_size"]
            extra = [f"train.max_steps={steps}", f"train.max_length={GPU_SEQ}", f"train.batch_size={batch}"]
            common = {"model_dir": str(model_dir), "rows": str(rows_file), "extra": extra + GPU_LORA}
            runs, skipped = measure(GPU_SETTINGS, common, repeats)
            flops, frozen, lora = matmul_flops_per_token(model_dir, 16)
        print(
            f"\n{name} (random weights; {frozen / 1e9:.2f}B matmul params, LoRA r=16 {lora / 1e6:.1f}M), bf16, "
            f"seq {GPU_SEQ}, batch {batch}, {steps} steps x {repeats} repeats"
        )
        print_table(runs, skipped, "TRL defaults (padded, bf16 + grad ckpt)", flops, peak)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="Qwen2.5-0.5B and Llama-3.1-8B shapes on a CUDA GPU")
    parser.add_argument("--models", nargs="+", default=list(GPU_MODELS), choices=list(GPU_MODELS))
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (CPU 20, GPU 30)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per setting (CPU 2, GPU 1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.gpu:
        return gpu_main(args.steps or 30, args.repeats or 1, args.models)
    return cpu_main(args.steps or 20, args.repeats or 2)


if __name__ == "__main__":
    raise SystemExit(main())
