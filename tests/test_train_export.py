"""Adapters and export: QLoRA (bitsandbytes 4-bit on this CPU), DoRA, full fine-tune, merged
weights that compute what base+adapter computes, and the adapter folder the server loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from shaping.config import Config
from shaping.hub import compute_dtype, load_base_model, quantization_config
from shaping.serve.models import SamplingOptions, ServedModels
from shaping.training import hf_peft
from shaping.training.export import main, merged_model

from .conftest import DIALOGUES, composed

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11], [1, 40, 41, 42, 43, 44, 45, 46]])


def train_adapter(cfg: Config, out: Path) -> hf_peft.TrainingReport:
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate = 3, 2, 2e-2
    return hf_peft.train(cfg, [{"messages": d} for d in DIALOGUES] * 2, out, out.parent / "live")


def test_qlora_trains_on_this_cpu_and_merges_into_the_dequantised_base(cfg: Config, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    cfg.lora.quantization, cfg.lora.dropout = composed("lora=qlora").lora.quantization, 0.0
    report = train_adapter(cfg, tmp_path / "adapter")
    assert report.metrics["adapter"] == "qlora" and report.metrics["steps"] == 3
    # base + adapter as trained: the 4-bit base with the adapter on top
    bnb = quantization_config(cfg.lora.quantization, compute_dtype(cfg.lora.quantization, "fp32"))
    quantized = load_base_model(cfg.model, torch.float32, quantization_config=bnb)
    assert type(quantized.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    tuned = PeftModel.from_pretrained(quantized, str(tmp_path / "adapter")).train()  # dropout is 0
    merged = merged_model(cfg, tmp_path / "adapter").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.dtype == torch.float32  # the base's original dtype
    # in train mode, as in training: bitsandbytes' repacked CPU inference kernel (eval mode, AVX512-BF16
    # CPUs) needs layers at least its 64-value block wide, and this test model's are 32 (the default's 128)
    expected = tuned(IDS).logits.detach()
    with torch.no_grad():
        got = merged(IDS).logits
        plain = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)(IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # merging into the original (not dequantised) weights would be off by the quantisation error
    assert (plain - expected).abs().max() > 100 * (got - expected).abs().max()


@pytest.mark.parametrize("dora", [False, True])
def test_merged_adapter_matches_base_plus_adapter(cfg: Config, tmp_path: Path, dora: bool) -> None:
    cfg.lora.dora, cfg.lora.dropout, cfg.train.merge = dora, 0.0, True
    report = train_adapter(cfg, tmp_path / "adapter")
    assert report.metrics["adapter"] == ("dora" if dora else "lora")
    merged_dir = tmp_path / "adapter" / "merged"
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, tuned(IDS).logits, rtol=1e-5, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)(IDS).logits
        assert (merged(IDS).logits - plain).abs().max() > 1e-3  # the adapter is really in there


def test_full_fine_tune_saves_a_whole_model(cfg: Config, tmp_path: Path) -> None:
    cfg.lora.enabled = False
    report = train_adapter(cfg, tmp_path / "model")
    assert report.metrics["adapter"] == "full"
    assert report.metrics["trainable_parameters"] == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path).parameters()
    )
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "model" / "adapter_config.json").exists()
    tuned = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    changed = [
        n
        for (n, p), (_, q) in zip(tuned.named_parameters(), base.named_parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert len(changed) > 10  # every layer trains, not just an adapter


def test_trained_adapter_loads_in_the_server_and_the_export_cli(cfg: Config, tmp_path: Path) -> None:
    train_adapter(cfg, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == cfg.lora.r  # what vLLM's --lora-modules reads
    served = ServedModels(cfg.model.name_or_path, {"tuned": str(tmp_path / "adapter")}, "base", "cpu")
    options = SamplingOptions(temperature=0.0, top_p=1.0, max_new_tokens=4, stop=(), seed=0)
    replies = served.generate("tuned", [DIALOGUES[1][:-1]], options)
    assert len(replies) == 1
    params = tmp_path / "params.yaml"
    from omegaconf import OmegaConf

    params.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    assert main([str(tmp_path / "adapter"), str(tmp_path / "merged"), "--params", str(params)]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert main([str(tmp_path / "merged"), str(tmp_path / "again"), "--params", str(params)]) == 2  # no adapter
