"""Load a trained LM from a folder, whatever made it, for generate and score.

- `char_lstm.json` in the folder: a char-LSTM run (its own vocab.json);
- `config.json`: a transformers model + tokenizer (models/base, models/pretrain, a checkpoint);
- `reference.json`: the hub model `prepare_base` recorded (needs the hub or the HF cache).
An adapter folder (models/adapter) is applied on top with PEFT; only transformers models take one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.errors import ShapingError
from shaping.scratch.families import CharTokenizer, get_family
from shaping.scratch.pretraining import Codec, resolve_device


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Codec
    kind: str  # char-lstm | transformers
    device: str


def load_model(folder: str | Path, adapter: str | Path | None = None, device: str = "auto") -> LoadedModel:
    folder = Path(folder)
    where = resolve_device(device)
    if (folder / "char_lstm.json").is_file():
        if adapter:
            raise ShapingError(f"{folder}: a char-LSTM is not a transformers model; LoRA adapters need one")
        model = get_family("char-lstm").load(folder)
        return LoadedModel(model.to(where), CharTokenizer.from_pretrained(folder), "char-lstm", where)
    name, revision = str(folder), None
    if (folder / "reference.json").is_file():
        reference = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
        name, revision = reference["name_or_path"], reference.get("revision")
    elif not (folder / "config.json").is_file():
        raise ShapingError(f"{folder}: no model here (expected config.json, char_lstm.json or reference.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision)
    except OSError as err:
        raise ShapingError(f"{name}: cannot load ({str(err).splitlines()[0]})") from None
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ShapingError(f"{adapter}: no adapter_config.json; run `dvc repro train` first")
        model = PeftModel.from_pretrained(model, str(adapter))
    net: torch.nn.Module = model
    net.eval()
    return LoadedModel(net.to(where), tokenizer, "transformers", where)
