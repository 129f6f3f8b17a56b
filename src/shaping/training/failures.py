"""Training failures a user can fix, each turned into one message that names the knob to turn."""

from __future__ import annotations

import logging
from typing import Any

import torch

from shaping.config.schema import Config
from shaping.errors import ShapingError

log = logging.getLogger(__name__)


class NonFiniteLoss(ShapingError):
    """The training loss became NaN or infinite: training stopped at that step."""


class StopOnNonFiniteLoss:
    """A Trainer mixin: check each micro-batch's loss and stop at the first NaN/inf one, naming the
    step. (The Trainer's own `logging_nan_inf_filter` would instead hide it behind the running mean
    and train on; it is switched off in the arguments.) The check reads the loss on the host once
    per micro-batch, the same sync the Trainer's filter makes."""

    state: Any
    args: Any

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss: torch.Tensor = super().training_step(*args, **kwargs)  # type: ignore[misc]
        if not bool(torch.isfinite(loss).all()):
            step = self.state.global_step + 1
            raise NonFiniteLoss(
                f"training loss became {float(loss)} at step {step} of {self.state.max_steps}: the run is "
                f"stopped. Lower train.learning_rate (now {self.args.learning_rate:g}), add warmup "
                "(train.warmup_ratio), use train.precision=bf16 or fp32 instead of fp16, or look for broken rows"
            )
        return loss


def out_of_memory_message(cfg: Config, device: str, err: BaseException) -> str:
    t = cfg.train
    knobs = [
        f"train.batch_size={t.batch_size} (halve it, and double train.gradient_accumulation_steps to keep the "
        "effective batch)",
        f"train.max_length={t.max_length}",
    ]
    if t.gradient_checkpointing is not True:
        knobs.append("train.gradient_checkpointing=true (recompute activations: ~20% slower, much less memory)")
    if cfg.lora.quantization is None:
        knobs.append(
            "lora=qlora (the frozen base in 4 bits)"
            if cfg.lora.enabled
            else "lora=default (an adapter instead of a full fine-tune)"
        )
    if t.method == "grpo":
        knobs.append(f"train.max_completion_length={t.max_completion_length} (the sampled replies' length)")
    if t.method in ("dpo", "kto") and not t.precompute_ref_log_probs and not cfg.lora.enabled:
        knobs.append("train.precompute_ref_log_probs=true (no reference model copy during training)")
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"out of memory on {device} ({first}). Turn one of these down: " + "; ".join(knobs)
