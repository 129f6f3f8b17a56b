"""The base model and its LoRA adapters, each under the name a request's `model` field uses."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from shaping.config.schema import Precision, QuantizationConfig, QuantType
from shaping.errors import ShapingError
from shaping.hub import quantization_config, use_training_kernels
from shaping.inference.engine import Engine, Row
from shaping.inference.hf import Completion, SamplingOptions, end_of_turn_ids, engine_supports, generate_rows
from shaping.inference.lora_rows import RowLoRA
from shaping.inference.sampling import prompt_ids

__all__ = ["AdapterError", "SamplingOptions", "ServedModels"]

BASE_ROW = "__base__"  # PEFT's name for a row of a mixed batch that runs the base model

log = logging.getLogger(__name__)


class AdapterError(Exception):
    """An adapter that cannot be loaded or unloaded: `status` (HTTP), the request `field` it is about."""

    def __init__(self, status: int, field: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.code = status, field, code


class ServedModels:
    """One base model in memory; with adapters it is a PeftModel holding each under its name.
    The base and every LoRA or DoRA adapter run together in one batch (RowLoRA, else PEFT's
    per-row `adapter_names`); an adapter neither can mix (non-LoRA types; DoRA beside an adapter
    RowLoRA cannot run, or on a 4-bit base) runs in batches of its own, set active, and the base
    alone runs with the adapters disabled. Adapters can be loaded and unloaded
    while serving (`load_adapter`, `unload_adapter`). Not thread-safe: the server calls
    `generate`, `load_adapter` and `unload_adapter` from one worker thread only; the event loop
    only reads `names`, `batch_group` and `serves`, which each change swaps in whole."""

    def __init__(
        self,
        model_path: str,
        adapters: dict[str, str],
        base_name: str,
        device: str,
        quantization: str | None = None,
        double_quant: bool = True,
    ) -> None:
        if base_name in adapters:
            raise ShapingError(f"--adapter {base_name}=...: the name is the base model's; pick another")
        for name, path in adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ShapingError(
                    f"--adapter {name}={path}: no adapter_config.json there; "
                    "point it at a PEFT adapter folder (the train stage writes models/adapter)"
                )
        # the base in 4 bits (QLoRA adapters, as training saw it), or as saved; an adapter's train
        # run record says which it was trained on, and each adapter is checked against it
        self.quantization: dict[str, Any] | None = (
            None if quantization is None else {"quant_type": quantization, "double_quant": double_quant}
        )
        for name, path in adapters.items():
            problem = self._trained_elsewhere(path)
            if problem:
                raise ShapingError(f"--adapter {name}={path}: {problem}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            base = AutoModelForCausalLM.from_pretrained(model_path, **self._loading(device))
        except OSError as err:
            raise ShapingError(f"--model {model_path}: cannot load a model and tokenizer there ({err})") from err
        if self.quantization is not None:
            use_training_kernels(base)
        if self.tokenizer.pad_token is None:  # batches are left-padded; Llama-style tokenizers have no pad
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the event loop counts prompt tokens while the worker thread generates; a fast tokenizer
        # used from two threads at once can fail ("Already borrowed"), so counting has its own
        self._counting_tokenizer = copy.deepcopy(self.tokenizer)
        model: PreTrainedModel | PeftModel = base
        for name, path in adapters.items():
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(base, path, adapter_name=name)
            log.info("loaded adapter %s from %s", name, path)
        if self.quantization is None:  # bitsandbytes places 4-bit weights itself
            model.to(device)  # type: ignore[arg-type]  # transformers types .to() through a decorator
        model.eval()
        self.model = model
        self.device = device
        self.base_name = base_name
        self.adapter_names = list(adapters)
        self.context_length: int | None = getattr(base.config, "max_position_embeddings", None)
        self.mixable = self._mixable_names()
        self._active: str | None = None  # the adapter set active for a batch of its rows alone
        self._rows: RowLoRA | None = None

    def _loading(self, device: str) -> dict[str, Any]:
        """from_pretrained's arguments for the base: bitsandbytes' 4-bit config with --quantization
        (compute in fp32 on CPU, as evaluation scores QLoRA adapters; bf16 on CUDA)."""
        if self.quantization is None:
            return {}
        compute = torch.float32 if device == "cpu" else torch.bfloat16
        quant = QuantizationConfig(
            bits=4,
            quant_type=QuantType(self.quantization["quant_type"]),
            double_quant=self.quantization["double_quant"],
            compute_dtype=Precision.auto,  # `compute` below decides
        )
        config = quantization_config(quant, compute)
        return {"quantization_config": config, "dtype": compute}

    def _trained_elsewhere(self, path: str) -> str | None:
        """Why the adapter at `path` would run on another base than its training's (its run record,
        the train stage's run.json next to it, says how it was trained), or None. An adapter without
        a record is taken as it is."""
        record = Path(path) / "run.json"
        try:
            details = json.loads(record.read_text(encoding="utf-8")).get("details") or {}
        except (OSError, ValueError, AttributeError):
            return None
        trained = details.get("adapter")
        if trained is None:
            return None
        if trained == "qlora":
            quant = details.get("quantization") or {"quant_type": "nf4", "double_quant": True}
            if quant != self.quantization:
                flags = f"--quantization {quant['quant_type']}" + (
                    "" if quant["double_quant"] else " --no-double-quant"
                )
                return (
                    f"trained as QLoRA on a 4-bit base ({quant['quant_type']}, double quantization "
                    f"{'on' if quant['double_quant'] else 'off'}), which this server does not load; serve it "
                    f"from a server started with {flags}"
                )
        elif self.quantization is not None:
            return (
                f"trained as {trained} on the full-precision base, but this server's base is 4-bit "
                "(--quantization); serve it from a server started without --quantization"
            )
        return None

    def _mixable_names(self) -> set[str]:
        """The adapters that can run on some rows of a batch beside the base and each other: plain
        LoRA (PEFT's per-row `adapter_names`, or RowLoRA); DoRA, which this peft refuses per row
        ("Cannot pass `adapter_names` when DoRA is enabled"), only through RowLoRA, so only where
        RowLoRA can run every one of them (a full-precision base, no LoRA bias)."""
        lora: set[str] = set()
        dora: set[str] = set()
        for name in self.adapter_names:
            config = getattr(self.model, "peft_config", {}).get(name)
            peft_type = str(getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", "")))
            if peft_type == "LORA":
                (dora if getattr(config, "use_dora", False) else lora).add(name)
        if dora and isinstance(self.model, PeftModel):
            rows = RowLoRA(self.model)
            if rows.plain and engine_supports(self.model) and lora | dora <= set(rows.adapters):
                return lora | dora
        return lora

    def batch_group(self, name: str) -> Hashable:
        """Requests whose models have the same group can share one generate() call."""
        return name if name in self.adapter_names and name not in self.mixable else self.base_name

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapter_names]

    def serves(self, name: str) -> bool:
        return name == self.base_name or name in self.adapter_names

    def load_adapter(self, name: str, path: str, replace: bool = False) -> None:
        """Load the PEFT adapter folder `path` as model `name` (vLLM's /v1/load_lora_adapter);
        `replace` reloads a name already served (vLLM's load_inplace). AdapterError names the field
        at fault: a missing folder (404), no adapter there, a name taken, an adapter that does not
        fit this base model (400). A failed load or reload leaves the served models as they were."""
        if not name:
            raise AdapterError(400, "lora_name", "lora_name: empty; name the adapter as requests will")
        if not path:
            raise AdapterError(400, "lora_path", "lora_path: empty; give the adapter folder")
        if name == self.base_name:
            raise AdapterError(400, "lora_name", f"lora_name: {name!r} is the base model's name; pick another")
        if "." in name:  # PEFT keeps each adapter in modules under its name, and a module name has no dot
            raise AdapterError(400, "lora_name", f"lora_name: {name!r} contains '.'; pick a name without one")
        if name in self.adapter_names and not replace:
            raise AdapterError(
                400,
                "lora_name",
                f"lora_name: the lora adapter {name!r} has already been loaded; unload it first "
                "or send load_inplace: true",
            )
        folder = Path(path)
        if not folder.is_dir():
            raise AdapterError(
                404, "lora_path", f"lora_path: no adapter found at {path} (no such folder on the server)", "not_found"
            )
        config_file = folder / "adapter_config.json"
        if not config_file.is_file():
            raise AdapterError(
                400,
                "lora_path",
                f"lora_path: {path} has no adapter_config.json; point it at a PEFT adapter folder "
                "(the train stage writes models/adapter)",
            )
        problem = self._trained_elsewhere(path)
        if problem:
            raise AdapterError(400, "lora_path", f"lora_path: {path} was {problem}")
        try:
            trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError) as err:
            raise AdapterError(
                400, "lora_path", f"lora_path: {config_file} is not a PEFT adapter config ({err})"
            ) from None
        if name in self.adapter_names:  # a reload: the new weights must fit before the old ones go
            scratch = f"{name}__reloading"
            self.load_adapter(scratch, path)
            self.unload_adapter(scratch)
            self.unload_adapter(name)
        before = self.model
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        except Exception as err:  # peft raises ValueError, RuntimeError (size mismatch), KeyError, ...
            self._forget_failed(before, name)
            detail = " ".join(str(err).split())[:400]
            raise AdapterError(
                400,
                "lora_path",
                f"lora_path: the adapter at {path} does not fit the served base model {self.base_name!r} "
                f"(it was trained on {trained_on!r}): {type(err).__name__}: {detail}",
            ) from None
        if self.quantization is None:
            self.model.to(self.device)
        self.model.eval()
        self.adapter_names = [*self.adapter_names, name]
        self.mixable = self._mixable_names()
        log.info("loaded adapter %s from %s", name, path)

    def _forget_failed(self, before: PreTrainedModel | PeftModel, name: str) -> None:
        """Undo what a failed load left: the half-loaded adapter's layers."""
        if isinstance(before, PeftModel):
            if name in before.peft_config:
                before.delete_adapter(name)
            self.model = before
            return
        # PeftModel.from_pretrained failed: the LoRA layers it injected into the base are taken out
        base: PreTrainedModel = before
        from peft.tuners.tuners_utils import BaseTunerLayer

        for parent in list(base.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer):
                    setattr(parent, child_name, child.get_base_layer())
        if "peft_config" in vars(base):  # PEFT's tuner marks the model it wraps
            del base.peft_config
        self.model = base

    def unload_adapter(self, name: str) -> None:
        """Stop serving adapter `name` and free its weights (vLLM's /v1/unload_lora_adapter)."""
        if name == self.base_name:
            raise AdapterError(400, "lora_name", f"lora_name: {name!r} is the base model; only adapters unload")
        if name not in self.adapter_names:
            raise AdapterError(
                404, "lora_name", f"lora_name: the lora adapter {name!r} cannot be found", "model_not_found"
            )
        self.adapter_names = [n for n in self.adapter_names if n != name]
        self.mixable = self.mixable - {name}
        model = self.model
        assert isinstance(model, PeftModel)
        if self.adapter_names:
            model.delete_adapter(name)
        else:  # the last one: back to the plain base model
            self.model = model.unload()
        self.mixable = self._mixable_names()  # a DoRA adapter may mix once an adapter RowLoRA cannot run is gone
        log.info("unloaded adapter %s", name)

    def engine(self, max_rows: int, max_tokens: int | None = None) -> Engine | None:
        """An Engine over the served models (rows name their model in `adapter`), or None for a
        model it cannot run."""
        if not engine_supports(self.model):
            return None
        self._active = None
        self._rows = RowLoRA(self.model) if isinstance(self.model, PeftModel) else None
        return Engine(
            self.model,  # type: ignore[arg-type]  # a PeftModel runs like the model it wraps
            self.tokenizer,
            end_of_turn_ids(self.model, self.tokenizer),  # type: ignore[arg-type]
            max_rows=max_rows,
            max_tokens=max_tokens,
            route=self._route,
        )

    def _route(self, rows: Sequence[Row]) -> AbstractContextManager[dict[str, Any]]:
        """The model set up for these rows (their `adapter` is the served model's name): LoRA
        and DoRA adapters and the base through RowLoRA (the formula per adapter, its scale per
        row); a batch of one adapter's rows that RowLoRA cannot run, set active alone; else PEFT's
        `adapter_names`."""
        model = self.model
        if not isinstance(model, PeftModel):
            return contextlib.nullcontext({})
        names = [BASE_ROW if row.adapter == self.base_name else str(row.adapter) for row in rows]
        if self._rows is not None and self._rows.fits(names):
            return self._rows.rows(names)  # no adapter set active: the model stays as _active says
        if len(set(names)) == 1 and names[0] != BASE_ROW:
            if self._active != names[0]:
                model.set_adapter(names[0])
                self._active = names[0]
            return contextlib.nullcontext({})
        return contextlib.nullcontext({"adapter_names": names})

    def prompt_ids(self, conversation: list[dict[str, str]], *, worker: bool = False) -> list[int]:
        """The prompt generate_chat builds for `conversation`, as token ids: with the event loop's
        tokenizer, or (`worker`) the generate thread's (a fast tokenizer used from two threads at
        once can fail)."""
        return prompt_ids(self.tokenizer if worker else self._counting_tokenizer, conversation)

    def generate(
        self, name: str, conversations: list[list[dict[str, str]]], options: SamplingOptions
    ) -> list[Completion]:
        """One reply per conversation from model `name` (the base or an adapter)."""
        return self.generate_rows([name] * len(conversations), conversations, [options] * len(conversations))

    def generate_rows(
        self, names: Sequence[str], conversations: list[list[dict[str, str]]], options: Sequence[SamplingOptions]
    ) -> list[Completion]:
        """One reply per conversation, row i from model names[i] with options[i]; the names must
        share a batch_group."""
        if len({self.batch_group(name) for name in names}) > 1:
            raise ValueError(f"generate_rows: {sorted(set(names))} cannot share one batch")
        model = self.model
        if not isinstance(model, PeftModel):
            return generate_rows(model, self.tokenizer, conversations, options)
        if set(names) == {self.base_name}:
            with model.disable_adapter():
                return generate_rows(model, self.tokenizer, conversations, options)  # type: ignore[arg-type]
        if len(set(names)) == 1:  # one adapter: the plain forward, without the per-row split
            model.set_adapter(names[0])
            self._active = names[0]
            return generate_rows(model, self.tokenizer, conversations, options)  # type: ignore[arg-type]
        adapter_names = [BASE_ROW if name == self.base_name else name for name in names]
        return generate_rows(
            model,  # type: ignore[arg-type]  # a PeftModel generates like the model it wraps
            self.tokenizer,
            conversations,
            options,
            adapter_names=adapter_names,
        )
