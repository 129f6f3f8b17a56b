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
for a few adapters. LoRA and DoRA on `nn.Linear` (or GPT-2's `Conv1D`) layers, for inference (no
dropout): no other variants, no quantized layers, no LoRA bias; `RowLoRA.fits` says whether a set
of adapters can run this way. A DoRA adapter's term is PEFT's DoRA formula, `(m - 1) * base +
m * lora_B(lora_A(x)) * scaling` with `m` its magnitude over the norm of the adapted weight, times
a per-row 0 or 1; `m` is computed once per layer (PEFT computes it at every forward, by the same
calls). PEFT's own per-row `adapter_names` refuses DoRA, so this is the only way a DoRA adapter
shares a batch. The adapters, their scales and DoRA's `m` are the ones the model held when the
RowLoRA was made: make a new one after loading, deleting, rescaling or retraining an adapter
(the server makes one per engine, and a new engine after each such change). LoRA weights are
read at each forward, so weights changed in place, or moved with the model, are seen. In bf16 a
row's result is PEFT's to the bit: the scaled LoRA term is rounded to the LoRA weights' dtype
before it is added, as PEFT's `* scaling` by a Python float leaves it.

A decoding step is short on a small model, so the per-step Python is kept small too: the
forwards for a set of adapters are built once and kept (each reads its rows' scales from a
list the step fills), a row mask is kept per list of names, and a base layer that is a plain
`nn.Linear` with no hooks (its own, global ones, or a wrapped `forward` such as accelerate's
offloading) is run as `F.linear` on its weights.
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


MASK_CACHE = 256  # row masks kept (one per list of names seen lately)
FORWARD_CACHE = 16  # sets of adapters whose forwards are kept
# one adapter's share of a layer: lora_A and lora_B weights, the index of its row scaling, and for
# DoRA (magnitude / weight norm, scaling, the base layer's bias)
Part = tuple[torch.Tensor, torch.Tensor, int, "tuple[torch.Tensor, float, torch.Tensor | None] | None"]


def _lora_forward(
    base_layer: torch.nn.Module,
    linear: tuple[torch.Tensor, torch.Tensor | None] | None,
    parts: list[Part],
    scalings: list[torch.Tensor],
    x: torch.Tensor,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """A LoRA layer's forward over rows of several adapters: `parts` holds each adapter's
    (lora_A weight, lora_B weight, index of its per-row scaling in `scalings`, DoRA's (magnitude
    scale, scaling, base bias) or None). `linear`: the base layer's (weight, bias) where it is an
    `nn.Linear` with no hooks, run as `F.linear` on them."""
    base = result = base_layer(x, *args, **kwargs) if linear is None else F.linear(x, *linear)
    dtype = result.dtype
    for a, b, index, dora in parts:
        lora = F.linear(F.linear(x if x.dtype == a.dtype else x.to(a.dtype), a), b)
        if dora is None:
            term = lora * scalings[index]  # the scale on the adapter's rows, 0 on the others
            like = lora
        else:  # PEFT's DoRA term, kept on the adapter's rows (1) and dropped on the others (0)
            magnitude, scaling, bias = dora
            like = (magnitude - 1) * (base if bias is None else base - bias) + magnitude * lora * scaling
            term = like * scalings[index]
        # the scalings are fp32: back to the term's dtype, as PEFT's Python-float scaling leaves it
        result = result + (term if term.dtype == like.dtype else term.to(like.dtype))
    return result if result.dtype == dtype else result.to(dtype)


def _global_hooks() -> bool:
    """Whether forward hooks are registered for every module (`register_module_forward_hook`)."""
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


class RowLoRA:
    """Per-row adapters for a PeftModel's batch through one lean forward (see the module)."""

    def __init__(self, model: Any) -> None:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        self.model = model
        self.layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]  # PEFT types them loosely
        self.plain = all(type(layer) is LoraLinear for layer in self.layers)
        # the adapters this can run: LoRA or DoRA (no other variant, no bias on lora_B) with a number for a scale
        from peft.tuners.lora.variants import DoraLinearVariant

        self.adapters = sorted(
            name
            for name in {name for layer in self.layers for name in layer.scaling}
            if all(
                (name not in layer.lora_variant or isinstance(layer.lora_variant[name], DoraLinearVariant))
                and isinstance(layer.scaling.get(name, 0.0), float)
                and (name not in layer.lora_B or layer.lora_B[name].bias is None)
                for layer in self.layers
            )
        )
        self.dora = {name for layer in self.layers for name in layer.lora_variant if name in self.adapters}
        self._magnitudes: dict[tuple[int, str], torch.Tensor] = {}  # DoRA's per layer and adapter
        # per set of adapters used: the layers' forwards, the (adapter, scale) pairs they scale by,
        # and the list those scalings go in at each forward
        self._forwards: dict[tuple[str, ...], tuple[list[tuple[Any, Any]], list[tuple[str, float]], list[Any]]] = {}
        self._masks: dict[tuple[tuple[str, ...], torch.device], list[torch.Tensor]] = {}

    def fits(self, names: Sequence[str]) -> bool:
        """Whether rows on these adapters (BASE_ADAPTER: the base) can share a forward here."""
        used = {name for name in names if name != BASE_ADAPTER}
        return (
            self.plain
            and bool(self.adapters)
            and (len(used) <= MAX_ADAPTERS or bool(used & self.dora))  # PEFT's split cannot run DoRA
            and used <= set(self.adapters)
            and not any(layer.merged for layer in self.layers)
        )

    def _build(self, used: tuple[str, ...]) -> tuple[list[tuple[Any, Any]], list[tuple[str, float]], list[Any]]:
        """The forwards of every LoRA layer for rows on these adapters (see `_forwards`)."""
        scales: list[tuple[str, float]] = []
        scalings: list[Any] = []
        forwards: list[tuple[Any, Any]] = []
        for layer in self.layers:
            parts: list[Part] = []
            base = layer.base_layer
            for name in used:
                if name in layer.lora_A:
                    dora = name in layer.lora_variant
                    # a DoRA term is kept or dropped per row (1 or 0); LoRA's is scaled per row
                    key = (name, 1.0 if dora else float(layer.scaling[name]))
                    if key not in scales:
                        scales.append(key)
                    extra = (self._magnitude(layer, name), float(layer.scaling[name]), base.bias) if dora else None
                    parts.append((layer.lora_A[name].weight, layer.lora_B[name].weight, scales.index(key), extra))
            hooked = base._forward_hooks or base._forward_pre_hooks or "forward" in base.__dict__ or _global_hooks()
            linear = (base.weight, base.bias) if type(base) is torch.nn.Linear and not hooked else None
            forwards.append((layer.__dict__, functools.partial(_lora_forward, base, linear, parts, scalings)))
        return forwards, scales, scalings

    def _magnitude(self, layer: Any, name: str) -> torch.Tensor:
        """DoRA's `magnitude / ||W + scaling * lora_B @ lora_A||` for one layer and adapter, (1, out),
        by PEFT's own calls in its forward's order and dtypes (the input's: lora_A's dtype)."""
        key = (id(layer), name)
        if key not in self._magnitudes:
            from peft.utils.integrations import dequantize_module_weight

            dora, lora_a = layer.lora_magnitude_vector[name], layer.lora_A[name]
            dtype = lora_a.weight.dtype
            with torch.no_grad():
                lora_weight = dora.get_lora_weight(lora_A=lora_a, lora_B=layer.lora_B[name], adapter_name=name)
                weight = dequantize_module_weight(layer.get_base_layer()).to(dtype)
                norm = dora.get_weight_norm(
                    weight=weight, lora_weight=lora_weight.to(dtype), scaling=layer.scaling[name], adapter_name=name
                )
                self._magnitudes[key] = (dora.weight / norm).view(1, -1)
        return self._magnitudes[key]

    def _scalings(self, names: tuple[str, ...], scales: list[tuple[str, float]]) -> list[torch.Tensor]:
        """Each (adapter, scale) pair's per-row scaling for these rows: the scale on the adapter's
        rows, 0 on the others; kept for the lists of names seen lately."""
        device = self.layers[0].base_layer.weight.device
        cached = self._masks.get((names, device))
        if cached is None:
            cached = [
                torch.tensor([scale if n == name else 0.0 for n in names], device=device)[:, None, None]
                for name, scale in scales
            ]
            if len(self._masks) >= MASK_CACHE:
                self._masks.pop(next(iter(self._masks)))
            self._masks[(names, device)] = cached
        return cached

    @contextlib.contextmanager
    def rows(self, names: Sequence[str]) -> Iterator[dict[str, Any]]:
        """For one forward: row i runs adapter names[i]. Yields the forward's extra arguments (none)."""
        key = tuple(names)
        used = tuple(sorted({name for name in key if name != BASE_ADAPTER}))
        if used not in self._forwards:
            if len(self._forwards) >= FORWARD_CACHE:
                self._forwards.pop(next(iter(self._forwards)))
            self._forwards[used] = self._build(used)
        forwards, scales, scalings = self._forwards[used]
        scalings[:] = self._scalings(key, scales)
        try:
            for attributes, forward in forwards:
                attributes["forward"] = forward
            yield {}
        finally:
            for attributes, _ in forwards:
                attributes.pop("forward", None)
            scalings.clear()
