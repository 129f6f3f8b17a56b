"""Pretrain a small causal LM from scratch: any family in `shaping.scratch.families`.

A plain PyTorch loop (nanoGPT-style) over random windows of two token streams, prose and
chat dialogues (ChatML), so the model learns both English-ish text and the turn format it
will be tuned in. Device and precision resolve from the config (fp16 with a grad scaler,
bf16 without); the DataLoader's workers and pin_memory follow the device; the validation
loss on fixed held-out windows is measured every `eval_interval` steps and the model ends
as its best evaluation.

Resumable: with a `checkpoint_dir`, every `checkpoint_interval` steps a `step-<N>/` folder gets the
model's files and then, renamed into place last, `state.pt` (weights, optimizer, grad scaler, RNG
states, the evaluations and best model so far, the recent losses). A folder without `state.pt` was
cut short by a kill. Run again with the same folder, the loop resumes from the newest complete one
and, since the window order is drawn once from the seed and the rest is restored, ends with the
same weights and evaluation curve as an uninterrupted run (bitwise on CPU).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from shaping.config.schema import ArchitectureConfig, PretrainConfig
from shaping.device import resolve_precision, torch_dtype
from shaping.errors import ShapingError
from shaping.scratch.families import CharTokenizer, Vocab, forward, get_family
from shaping.scratch.tokenizer import END_OF_TEXT, IM_END

log = logging.getLogger(__name__)

Codec = PreTrainedTokenizerBase | CharTokenizer  # what the LM code needs of a tokenizer
Dialogue = list[dict[str, str]]
STATE_FILE = "state.pt"  # a step folder's last file, renamed into place: without it the folder was cut short
_STEP = re.compile(r"^step-(\d+)$")
# model.pretrain keys that change where and how often states are saved, or what happens after training,
# not the weights: a killed run resumes after they change
UNWEIGHTED_PRETRAIN_KEYS = ("checkpoint_interval", "keep_checkpoints", "sample_prompts", "sample_max_new_tokens")


def token_id(tokenizer: Codec, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ShapingError(f"tokenizer has no single id for {token!r}")
    return found


def vocab_of(tokenizer: Codec) -> Vocab:
    return Vocab(size=len(tokenizer), eos_id=token_id(tokenizer, IM_END), pad_id=token_id(tokenizer, END_OF_TEXT))


def build_model(arch: ArchitectureConfig, tokenizer: Codec) -> torch.nn.Module:
    """A randomly initialised model of `arch.family` sized for `tokenizer`."""
    return get_family(arch.family).build(arch, vocab_of(tokenizer))


def encode_streams(
    tokenizer: Codec, prose: list[str], dialogues: list[Dialogue]
) -> tuple[list[int], list[int], list[int]]:
    """Token streams for pretraining: (prose ids, dialogue ids, offsets where dialogues start)."""
    eot = token_id(tokenizer, END_OF_TEXT)
    prose_ids: list[int] = []
    for ids in tokenizer(prose, add_special_tokens=False)["input_ids"] if prose else []:
        prose_ids.extend([*ids, eot])
    rendered = [str(tokenizer.apply_chat_template(d, tokenize=False)) for d in dialogues]
    dialogue_ids: list[int] = []
    starts: list[int] = []
    for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"] if rendered else []:
        starts.append(len(dialogue_ids))
        dialogue_ids.extend([*ids, eot])
    return prose_ids, dialogue_ids, starts


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ShapingError("model.pretrain.device=cuda: no CUDA device here; use auto or cpu")
    if requested not in ("cuda", "cpu"):
        raise ShapingError(f"model.pretrain.device={requested!r}: choose auto, cuda or cpu")
    return requested


def resolve_pretrain_precision(requested: str, device: str) -> tuple[str, str]:
    if requested not in ("auto", "fp16", "bf16", "fp32"):
        raise ShapingError(f"model.pretrain.precision={requested!r}: choose auto, fp16, bf16 or fp32")
    if requested == "fp16" and device != "cuda":
        raise ShapingError("model.pretrain.precision=fp16 needs CUDA (autocast + grad scaler); use bf16 or fp32")
    precision, reason = resolve_precision(requested, device)
    return precision, reason.replace("train.precision", "model.pretrain.precision")


class Windows(Dataset[torch.Tensor]):
    """Windows of `block` tokens: item i starts at `starts[i]` in stream `which[i]`."""

    def __init__(self, streams: list[torch.Tensor], which: torch.Tensor, starts: torch.Tensor, block: int) -> None:
        self.streams, self.which, self.starts, self.block = streams, which, starts, block

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = int(self.starts[i])
        return self.streams[int(self.which[i])][start : start + self.block]


def eval_windows(ids: list[int], block: int, count: int) -> torch.Tensor:
    """`count` evenly spaced windows of `block` tokens: the same ones at every evaluation."""
    if len(ids) <= block:
        raise ShapingError(
            f"model.pretrain.block_size={block - 1}: longer than the holdout ({len(ids)} tokens); "
            "raise tokenizer.holdout_fraction or lower block_size"
        )
    last = len(ids) - block
    starts = [round(i * last / max(1, count - 1)) for i in range(count)]
    return torch.tensor([ids[s : s + block] for s in starts], dtype=torch.long)  # (N, T+1)


@dataclass
class PretrainReport:
    steps: int
    final_loss: float  # mean training loss over the last 20 steps
    tokens_per_second: float
    samples_per_second: float
    parameters: int
    seconds: float  # training time (evaluations included)
    device: str = "cpu"
    precision: str = "fp32"
    precision_reason: str = ""
    batch_size: int = 0
    num_workers: int = 0
    pin_memory: bool = False
    evals: list[dict[str, float]] = field(default_factory=list)  # {step, train_loss, eval_loss, eval_perplexity}
    best_step: int | None = None
    best_eval_loss: float | None = None
    resumed_from_step: int = 0  # the checkpoint this run resumed from (0: it started afresh)


def run_key(arch: ArchitectureConfig, cfg: PretrainConfig, seed: int, vocab_size: int, *streams: list[int]) -> str:
    """A short hash of what the pretrained weights depend on: the seed, the architecture, the
    model.pretrain keys that change the weights, the vocabulary size and the token streams (which
    carry the corpus, its split and the tokenizer). A run resumes only from its own key's states."""
    pretrain = {k: v for k, v in asdict(cfg).items() if k not in UNWEIGHTED_PRETRAIN_KEYS}
    settings = {"seed": seed, "architecture": asdict(arch), "pretrain": pretrain, "vocab_size": vocab_size}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for ids in streams:
        digest.update(array("q", ids).tobytes() + b"\0")
    return digest.hexdigest()[:16]


def complete_states(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete saved states, oldest first; folders cut short are deleted."""
    found = []
    for path in checkpoint_dir.iterdir() if checkpoint_dir.is_dir() else []:
        match = _STEP.match(path.name)
        if not match or not path.is_dir():
            continue
        if (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
        else:
            log.warning("deleting %s: cut short while it was written", path)
            shutil.rmtree(path)
    return sorted(found)


def save_state(
    checkpoint_dir: Path,
    step: int,
    state: dict[str, Any],
    model: torch.nn.Module,
    save_files: Callable[[torch.nn.Module, Path], None] | None,
    keep: int,
) -> None:
    """`checkpoint_dir/step-<N>/`: the model's files (save_files), then state.pt by a rename; then only
    the newest `keep` complete states stay."""
    folder = checkpoint_dir / f"step-{step:06d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if save_files is not None:
        save_files(model, folder)
    partial = folder / f"{STATE_FILE}.partial"
    torch.save(state, partial)
    os.replace(partial, folder / STATE_FILE)
    log.info("checkpoint saved: %s (step %d)", folder, step)
    for _, old in complete_states(checkpoint_dir)[:-keep]:
        shutil.rmtree(old)


def pretrain(
    model: torch.nn.Module,
    prose_ids: list[int],
    dialogue_ids: list[int],
    dialogue_starts: list[int],
    cfg: PretrainConfig,
    seed: int,
    *,
    eval_ids: list[int] | None = None,
    checkpoint_dir: Path | None = None,
    save_files: Callable[[torch.nn.Module, Path], None] | None = None,
) -> PretrainReport:
    """Train `model` in place for `cfg.steps` steps; with `eval_ids`, it ends as its best evaluation.
    With `checkpoint_dir`, saves a resumable state there every `cfg.checkpoint_interval` steps (with the
    files `save_files` writes) and resumes from the newest one found."""
    block = cfg.block_size + 1  # inputs and shifted targets
    device = resolve_device(cfg.device)
    precision, precision_reason = resolve_pretrain_precision(cfg.precision, device)
    batch_size = cfg.batch_size
    if device == "cuda" and batch_size < cfg.cuda_min_batch_size:
        log.info("CUDA: batch_size %d raised to cuda_min_batch_size=%d", batch_size, cfg.cuda_min_batch_size)
        batch_size = cfg.cuda_min_batch_size
    workers = (
        cfg.num_workers if cfg.num_workers is not None else (min(4, os.cpu_count() or 1) if device == "cuda" else 0)
    )

    # Every window start in prose; dialogue windows start at a dialogue, so the model sees turns whole.
    prose_starts = list(range(max(0, len(prose_ids) - block + 1)))
    dialogue_starts = [s for s in dialogue_starts if s + block <= len(dialogue_ids)]
    if not prose_starts and not dialogue_starts:
        raise ShapingError(f"model.pretrain.block_size={cfg.block_size}: longer than the corpus streams")
    share = cfg.dialogue_weight if prose_starts and dialogue_starts else (1.0 if dialogue_starts else 0.0)
    weights = [(1 - share) / max(1, len(prose_starts))] * len(prose_starts) + [
        share / max(1, len(dialogue_starts))
    ] * len(dialogue_starts)
    dataset = Windows(
        [torch.tensor(prose_ids or [0], dtype=torch.long), torch.tensor(dialogue_ids or [0], dtype=torch.long)],
        torch.tensor([0] * len(prose_starts) + [1] * len(dialogue_starts)),
        torch.tensor(prose_starts + dialogue_starts),
        block,
    )
    generator = torch.Generator().manual_seed(seed)
    # the whole run's window order, drawn once (what WeightedRandomSampler draws): a resumed run skips its head
    order: list[int] = torch.multinomial(
        torch.as_tensor(weights, dtype=torch.double), cfg.steps * batch_size, replacement=True, generator=generator
    ).tolist()
    held_out = eval_windows(eval_ids, block, cfg.eval_batches * batch_size) if eval_ids is not None else None

    torch.manual_seed(seed)
    model.to(device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
    )
    autocast_dtype = torch_dtype(precision)
    use_autocast = precision in ("fp16", "bf16")
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")  # fp16 gradients underflow unscaled

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device, dtype=autocast_dtype, enabled=use_autocast):
            logits, _ = forward(model, batch[:, :-1])  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))

    @torch.no_grad()
    def evaluate() -> float:
        assert held_out is not None
        model.eval()
        losses = [loss_of(chunk.to(device)).item() for chunk in held_out.split(batch_size)]
        model.train()
        return sum(losses) / len(losses)

    recent: list[float] = []
    evals: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    start = 0
    saved = complete_states(checkpoint_dir) if checkpoint_dir is not None else []
    resumed: dict[str, Any] | None = None
    if saved:
        resumed = torch.load(saved[-1][1] / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        start, recent, evals = int(resumed["step"]), list(resumed["recent"]), list(resumed["evals"])
        best = (resumed["best"][0], resumed["best"][1], resumed["best"][2]) if resumed["best"] is not None else None
        log.info("resuming from %s (step %d)", saved[-1][1], start)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order[start * batch_size :],
        num_workers=workers,
        pin_memory=device == "cuda",
        drop_last=True,
    )
    batches = iter(loader)  # draws its base seed from the global RNG: before the saved RNG state is restored
    if resumed is not None:
        torch.set_rng_state(resumed["rng"])
        if device == "cuda" and resumed["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])
    t0 = time.perf_counter()
    bar = tqdm(batches, total=cfg.steps, initial=start, desc="pretrain", unit="step", mininterval=2.0)
    for step, batch in enumerate(bar, start=start + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1)
        loss = loss_of(batch.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        recent = [*recent[-19:], loss.item()]
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
        if held_out is not None and (step % cfg.eval_interval == 0 or step == cfg.steps):
            eval_loss = evaluate()
            evals.append(
                {
                    "step": step,
                    "train_loss": round(sum(recent) / len(recent), 4),
                    "eval_loss": round(eval_loss, 4),
                    "eval_perplexity": round(math.exp(eval_loss), 3),
                }
            )
            log.info("step %d: eval loss %.4f (perplexity %.2f)", step, eval_loss, math.exp(eval_loss))
            if best is None or eval_loss < best[0]:
                best = (eval_loss, step, copy.deepcopy(model.state_dict()))
        if checkpoint_dir is not None and step % cfg.checkpoint_interval == 0 and step < cfg.steps:
            state = {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "recent": recent,
                "evals": evals,
                "best": best,
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device == "cuda" else None,
            }
            save_state(checkpoint_dir, step, state, model, save_files, keep=max(1, cfg.keep_checkpoints))
    seconds = time.perf_counter() - t0
    run_steps = cfg.steps - start  # this run's own work: a resumed run's speed is over its own steps
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    model.to("cpu")
    report = PretrainReport(
        steps=cfg.steps,
        final_loss=round(sum(recent) / max(1, len(recent)), 4),
        tokens_per_second=round(run_steps * batch_size * cfg.block_size / seconds, 1),
        samples_per_second=round(run_steps * batch_size / seconds, 2),
        parameters=sum(p.numel() for p in model.parameters()),
        seconds=round(seconds, 2),
        device=device,
        precision=precision,
        precision_reason=precision_reason,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device == "cuda",
        evals=evals,
        best_step=best[1] if best else None,
        best_eval_loss=round(best[0], 4) if best else None,
        resumed_from_step=start,
    )
    log.info(
        "pretrained %d params on %s (%s): loss %.3f, %.1f samples/s",
        report.parameters,
        device,
        precision,
        report.final_loss,
        report.samples_per_second,
    )
    return report
