"""Rows of one batch on different LoRA adapters (or the base), in PEFT's plain LoRA forward.

PEFT mixes adapters per row with `adapter_names=`: each LoRA layer splits the batch by adapter,
runs each part and adds it back, and every forward registers a hook on every layer; on a small
model that Python work costs more than the matmuls (a third of the time of a decoding step on
the demo model). Here every adapter the batch uses is set active (PEFT sums active adapters) and
each one's `scaling` becomes a per-row tensor: its scale on its own rows, 0 on the others. The
LoRA formula is unchanged (`result + lora_B(lora_A(x)) * scaling`), so a row gets what its
adapter alone gives it; the price is each adapter's low-rank matmuls over the whole batch, cheap
for a few adapters. Plain LoRA on `nn.Linear` layers only (no DoRA or other variants, no
quantized layers); `RowLoRA.fits` says whether a set of adapters can run this way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch

BASE_ADAPTER = "__base__"  # PEFT's name for a row that runs the base model
MAX_ADAPTERS = 4  # more adapters in one batch: PEFT's per-row split costs less than a LoRA pass each


class RowLoRA:
    """Per-row adapters for a PeftModel's batch through its plain forward (see the module)."""

    def __init__(self, model: Any) -> None:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self.scales = [dict(layer.scaling) for layer in self.layers]  # each adapter's own, per layer
        self.plain = all(type(layer) is LoraLinear for layer in self.layers)
        # the adapters this can run: plain LoRA (no DoRA or other variant) with a number for a scale
        self.adapters = sorted(
            name
            for name in {name for scales in self.scales for name in scales}
            if all(
                name not in layer.lora_variant and isinstance(scales.get(name, 0.0), float)
                for layer, scales in zip(self.layers, self.scales, strict=True)
            )
        )
        self.active: tuple[str, ...] | None = None

    def fits(self, names: Sequence[str]) -> bool:
        """Whether rows on these adapters (BASE_ADAPTER: the base) can share a plain forward."""
        used = {name for name in names if name != BASE_ADAPTER}
        return self.plain and bool(self.adapters) and len(used) <= MAX_ADAPTERS and used <= set(self.adapters)

    @contextlib.contextmanager
    def rows(self, names: Sequence[str]) -> Iterator[dict[str, Any]]:
        """For one forward: row i runs adapter names[i]. Yields the forward's extra arguments (none)."""
        # base rows alone: a plain adapter active at scale 0 (the same forward, no other path)
        used = tuple(sorted({name for name in names if name != BASE_ADAPTER})) or (self.adapters[0],)
        if used != self.active:
            self.model.base_model.set_adapter(list(used))
            self.active = used
        device = cast(torch.nn.Linear, self.layers[0].lora_A[used[0]]).weight.device
        masks = {name: torch.tensor([n == name for n in names], device=device)[:, None, None] for name in used}
        scaled: dict[tuple[str, float], torch.Tensor] = {}
        for layer, scales in zip(self.layers, self.scales, strict=True):
            for name in used:
                if name in scales:
                    key = (name, scales[name])
                    if key not in scaled:
                        scaled[key] = masks[name] * scales[name]
                    layer.scaling[name] = scaled[key]
        try:
            yield {}
        finally:
            for layer, scales in zip(self.layers, self.scales, strict=True):
                for name in used:
                    if name in scales:
                        layer.scaling[name] = scales[name]

    def restore(self, active: str | list[str]) -> None:
        """Set the adapters active as before (a caller that runs the model its own way next)."""
        self.model.base_model.set_adapter(active)
        self.active = None
