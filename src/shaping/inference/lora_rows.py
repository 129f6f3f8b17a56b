"""Rows of one batch on different LoRA adapters (or the base), in one lean forward.

PEFT mixes adapters per row with `adapter_names=`: each LoRA layer splits the batch by adapter,
runs each part and adds it back, and every forward registers a hook on every layer. Even its
plain forward (one adapter active) checks its arguments, loops over the active adapters and
casts dtypes in Python on every layer. On a small model that Python work costs more than the
matmuls. Here, for one forward, each LoRA layer's `forward` is replaced by the LoRA formula
alone, PEFT's own (`result + lora_B(lora_A(x)) * scaling`), once per adapter the batch uses,
with `scaling` a per-row tensor: the adapter's scale on its own rows, 0 on the others. So a row
gets what its adapter alone gives it (a base row: the base layer's output plus zeros), and no
adapter is set active. The price is each adapter's low-rank matmuls over the whole batch, cheap
for a few adapters. Plain LoRA on `nn.Linear` (or GPT-2's `Conv1D`) layers, for inference
(no dropout): no DoRA or other variants, no quantized layers, no LoRA bias; `RowLoRA.fits` says
whether a set of adapters can run this way. The weights are read at each forward, so adapters
loaded or replaced in place are seen at once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

BASE_ADAPTER = "__base__"  # PEFT's name for a row that runs the base model
MAX_ADAPTERS = 4  # more adapters in one batch: PEFT's per-row split costs less than a LoRA pass each


def _lora_forward(
    base_layer: torch.nn.Module,
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """A LoRA layer's forward over rows of several adapters: `parts` holds each adapter's
    (lora_A weight, lora_B weight, per-row scaling)."""
    result = base_layer(x, *args, **kwargs)
    dtype = result.dtype
    for a, b, scaling in parts:
        result = result + F.linear(F.linear(x.to(a.dtype), a), b) * scaling
    return result.to(dtype)


class RowLoRA:
    """Per-row adapters for a PeftModel's batch through one lean forward (see the module)."""

    def __init__(self, model: Any) -> None:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        self.model = model
        self.layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]  # PEFT types them loosely
        self.plain = all(type(layer) is LoraLinear for layer in self.layers)
        # the adapters this can run: plain LoRA (no DoRA or other variant, no bias on lora_B) with a number for a scale
        self.adapters = sorted(
            name
            for name in {name for layer in self.layers for name in layer.scaling}
            if all(
                name not in layer.lora_variant
                and isinstance(layer.scaling.get(name, 0.0), float)
                and (name not in layer.lora_B or layer.lora_B[name].bias is None)
                for layer in self.layers
            )
        )

    def fits(self, names: Sequence[str]) -> bool:
        """Whether rows on these adapters (BASE_ADAPTER: the base) can share a forward here."""
        used = {name for name in names if name != BASE_ADAPTER}
        return (
            self.plain
            and bool(self.adapters)
            and len(used) <= MAX_ADAPTERS
            and used <= set(self.adapters)
            and not any(layer.merged for layer in self.layers)
        )

    @contextlib.contextmanager
    def rows(self, names: Sequence[str]) -> Iterator[dict[str, Any]]:
        """For one forward: row i runs adapter names[i]. Yields the forward's extra arguments (none)."""
        used = sorted({name for name in names if name != BASE_ADAPTER})
        device = self.layers[0].base_layer.weight.device if self.layers else torch.device("cpu")
        masks = {name: torch.tensor([n == name for n in names], device=device)[:, None, None] for name in used}
        scaled: dict[tuple[str, float], torch.Tensor] = {}
        try:
            for layer in self.layers:
                parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
                for name in used:
                    if name in layer.lora_A:
                        scale = layer.scaling[name]
                        if (name, scale) not in scaled:
                            scaled[(name, scale)] = masks[name] * scale
                        parts.append((layer.lora_A[name].weight, layer.lora_B[name].weight, scaled[(name, scale)]))
                layer.forward = functools.partial(_lora_forward, layer.base_layer, parts)
            yield {}
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)
