"""Export: an adapter merged into its base's weights, saved as one safetensors model.

    python -m shaping.training.export models/adapter models/merged            # base etc. from params.yaml
    python -m shaping.training.export models/adapter models/merged --params outputs/.../params.yaml
    dvc exp run -S train.merge=true                                           # the train stage does it too

The adapter folder itself (adapter_config.json + adapter_model.safetensors) is what
`python -m shaping.serve --adapter NAME=models/adapter` and vLLM's `--lora-modules NAME=models/adapter`
load. A merged model needs neither PEFT nor LoRA support where it is served.

QLoRA: the adapter was trained against the 4-bit base, so it is merged into that base dequantised
to the base's original dtype, not into the original 16/32-bit weights (which differ from what the
adapter saw by the quantisation error). The merged model then computes what base+adapter computed
in training, up to float rounding.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel

from shaping.config.schema import Config
from shaping.device import torch_dtype
from shaping.errors import ShapingError
from shaping.hub import base_location, compute_dtype, load_base_model, load_tokenizer, quantization_config

log = logging.getLogger(__name__)


def original_dtype(cfg: Config) -> torch.dtype:
    """The dtype the base's weights were saved in (config.json's dtype), fp32 when it says none."""
    name, revision = base_location(cfg.model)
    saved = getattr(AutoConfig.from_pretrained(name, revision=revision), "dtype", None)
    if isinstance(saved, torch.dtype):
        return saved
    return torch_dtype({"bfloat16": "bf16", "float16": "fp16"}.get(str(saved), "fp32"))


def merged_model(cfg: Config, adapter_dir: Path, precision: str = "fp32") -> PreTrainedModel:
    """The base (dequantised for QLoRA) in its original dtype with the adapter folded into its weights."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise ShapingError(
            f"{adapter_dir}: no adapter_config.json; merging needs a LoRA adapter (lora=none saves a "
            "full model already)"
        )
    dtype = original_dtype(cfg)
    bnb = quantization_config(cfg.lora.quantization, compute_dtype(cfg.lora.quantization, precision))
    if bnb is None:
        base = load_base_model(cfg.model, dtype)
    else:
        # the adapter learnt the 4-bit weights' errors: merge into exactly those weights, dequantised
        base = load_base_model(cfg.model, dtype, quantization_config=bnb).dequantize(dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return merged.to(dtype)


def merge_adapter(cfg: Config, adapter_dir: Path, out_dir: Path, precision: str = "fp32") -> Path:
    """Save the merged model and the tokenizer to `out_dir` (safetensors)."""
    model = merged_model(cfg, adapter_dir, precision)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config  # the weights are plain tensors now
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))  # safetensors: transformers' only format since v5
    load_tokenizer(cfg.model).save_pretrained(str(out_dir))
    log.info("merged %s into the base: %s (%s)", adapter_dir, out_dir, model.dtype)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    from shaping.config import load_params

    parser = argparse.ArgumentParser(prog="python -m shaping.training.export", description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", type=Path, help="a PEFT adapter folder (the train stage's models/adapter)")
    parser.add_argument("out_dir", type=Path, help="where the merged model and tokenizer go")
    parser.add_argument("--params", default="params.yaml", help="the config naming the base (model, lora sections)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        merge_adapter(load_params(args.params), args.adapter_dir, args.out_dir)
    except ShapingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
