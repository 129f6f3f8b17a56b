"""Pretrain a small causal LM from scratch: the offline default base model.

A plain PyTorch loop (nanoGPT-style): random windows from a prose stream and a chat-dialogue
stream, so the model learns both English-ish text and the turn format it will be tuned in.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from shaping.config.schema import ArchitectureConfig, PretrainConfig
from shaping.errors import ShapingError
from shaping.training.tokenizer import END_OF_TEXT, IM_END

log = logging.getLogger(__name__)


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"tokenizer has no single id for {token!r}")
    return found


def build_model(arch: ArchitectureConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A randomly initialised transformers model of `arch.family` sized for `tokenizer`."""
    eos_id, pad_id = token_id(tokenizer, IM_END), token_id(tokenizer, END_OF_TEXT)
    if arch.hidden_size % arch.num_heads:
        raise ShapingError(
            f"model.architecture: hidden_size={arch.hidden_size} is not divisible by num_heads={arch.num_heads}"
        )
    model: PreTrainedModel
    if arch.family == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=arch.hidden_size,
                intermediate_size=arch.intermediate_size,
                num_hidden_layers=arch.num_layers,
                num_attention_heads=arch.num_heads,
                num_key_value_heads=arch.num_kv_heads,
                max_position_embeddings=arch.max_position_embeddings,
                tie_word_embeddings=arch.tie_word_embeddings,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
        )
    elif arch.family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_embd=arch.hidden_size,
                n_inner=arch.intermediate_size,
                n_layer=arch.num_layers,
                n_head=arch.num_heads,
                n_positions=arch.max_position_embeddings,
                tie_word_embeddings=arch.tie_word_embeddings,
                bos_token_id=eos_id,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
        )
    else:
        raise ShapingError(f"model.architecture.family={arch.family!r}: choose llama or gpt2")
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    return model


@dataclass
class PretrainReport:
    steps: int
    final_loss: float
    tokens_per_second: float
    parameters: int
    seconds: float


def _windows(tokens: list[int], starts: list[int], block: int, batch: int, rng: random.Random) -> torch.Tensor:
    rows = []
    for _ in range(batch):
        start = rng.choice(starts)
        window = tokens[start : start + block]
        rows.append(window)
    return torch.tensor(rows, dtype=torch.long)  # (B, T)


def pretrain(
    model: PreTrainedModel,
    prose_ids: list[int],
    dialogue_ids: list[int],
    dialogue_starts: list[int],
    cfg: PretrainConfig,
    seed: int,
) -> PretrainReport:
    """Train `model` in place for `cfg.steps` steps of next-token prediction."""
    block = cfg.block_size + 1  # inputs and shifted targets
    if len(prose_ids) <= block or len(dialogue_ids) <= block:
        raise ShapingError(f"model.pretrain.block_size={cfg.block_size}: longer than the corpus streams")
    rng = random.Random(seed)
    prose_starts = list(range(len(prose_ids) - block))
    dialogue_starts = [s for s in dialogue_starts if s + block <= len(dialogue_ids)] or [0]
    torch.manual_seed(seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    recent: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step", mininterval=2.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        if rng.random() < cfg.dialogue_weight:
            batch = _windows(dialogue_ids, dialogue_starts, block, cfg.batch_size, rng)
        else:
            batch = _windows(prose_ids, prose_starts, block, cfg.batch_size, rng)
        logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = [*recent[-19:], loss.item()]
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    seconds = time.perf_counter() - t0
    model.eval()
    tokens = cfg.steps * cfg.batch_size * cfg.block_size
    report = PretrainReport(
        steps=cfg.steps,
        final_loss=round(sum(recent) / max(1, len(recent)), 4),
        tokens_per_second=round(tokens / seconds, 1),
        parameters=sum(p.numel() for p in model.parameters()),
        seconds=round(seconds, 2),
    )
    log.info(
        "pretrained %d params: loss %.3f, %.0f tokens/s",
        report.parameters,
        report.final_loss,
        report.tokens_per_second,
    )
    return report


def load_corpus(corpus_dir: str) -> tuple[list[str], list[list[dict[str, str]]]]:
    """Prose paragraphs from *.txt and chat dialogues from *.jsonl under `corpus_dir`."""
    from pathlib import Path

    from shaping.io import iter_jsonl

    folder = Path(corpus_dir)
    if not folder.is_dir():
        raise ShapingError(f"{folder}: corpus folder not found (paths.corpus_dir)")
    prose: list[str] = []
    for file in sorted(folder.glob("*.txt")):
        text = file.read_text(encoding="utf-8")
        prose.extend(p.strip() for p in text.split("\n\n") if p.strip())
    dialogues: list[list[dict[str, str]]] = []
    for file in sorted(folder.glob("*.jsonl")):
        for lineno, row in iter_jsonl(file):
            messages = row.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ShapingError(f"{file}:{lineno}: expected a non-empty 'messages' list")
            dialogues.append(messages)
    if not prose or not dialogues:
        raise ShapingError(
            f"{folder}: needs prose (*.txt) and dialogues (*.jsonl); found "
            f"{len(prose)} paragraphs, {len(dialogues)} dialogues"
        )
    return prose, dialogues


def encode_streams(
    tokenizer: PreTrainedTokenizerFast, prose: list[str], dialogues: list[list[dict[str, str]]]
) -> tuple[list[int], list[int], list[int]]:
    """Token streams for pretraining: (prose ids, dialogue ids, offsets where dialogues start)."""
    eot = token_id(tokenizer, END_OF_TEXT)
    prose_ids: list[int] = []
    for ids in tokenizer(prose, add_special_tokens=False)["input_ids"]:
        prose_ids.extend([*ids, eot])
    rendered = [str(tokenizer.apply_chat_template(d, tokenize=False)) for d in dialogues]
    dialogue_ids: list[int] = []
    starts: list[int] = []
    for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]:
        starts.append(len(dialogue_ids))
        dialogue_ids.extend([*ids, eot])
    return prose_ids, dialogue_ids, starts
