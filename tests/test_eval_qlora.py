"""The evaluate stage scores an adapter on the base it was trained on: a QLoRA adapter over the
4-bit base (bitsandbytes NF4, on this CPU), a LoRA adapter over the full-precision base, a full
fine-tune as the model it saved, and the base model itself always unquantized. Each tuned loss is
checked against one computed here with transformers + peft + BitsAndBytesConfig directly, outside
the project's loading code."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from shaping.config import Config, compose
from shaping.errors import ShapingError
from shaping.stage import StageContext
from shaping.tracking import RunRecord
from shaping.training import hf_peft

from .conftest import DIALOGUES, PROSE, REPO, composed

pytest.importorskip("bitsandbytes")

# metrics.json rounds losses to 6 decimals; batching and padding add float noise below that
TOL = 5e-6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny Llama, pretrained 50 steps, with an MLP 96 wide: no multiple of the 64-value block of
    bitsandbytes' CPU inference kernel (eval mode, AVX512-BF16 CPUs), which fails on such layers, like the
    demo model's 352. Every quantized layer then gets one outlier per 64-value block (`with_block_outliers`),
    so NF4's error is large by construction, whatever the CPU's numerics."""
    from shaping.scratch.pretraining import build_model, encode_streams, pretrain
    from shaping.scratch.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("model")
    tokenizer = train_bpe_tokenizer(PROSE + [m["content"] for d in DIALOGUES for m in d], vocab_size=320)
    arch = dataclasses.replace(
        composed().model.architecture,  # conf/model/tiny.yaml's llama
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=96,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    model = build_model(arch, tokenizer)
    prose_ids, dialogue_ids, starts = encode_streams(tokenizer, PROSE, DIALOGUES * 10)
    config = dataclasses.replace(composed().model.pretrain, steps=50, batch_size=4, block_size=32)
    pretrain(model, prose_ids, dialogue_ids, starts, config, seed=0)
    with_block_outliers(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def with_block_outliers(model: torch.nn.Module, outlier: float = 2.0) -> None:
    """Set the first value of every 64-value block (bitsandbytes' 4-bit block size, over the flattened weight)
    of each decoder Linear to `outlier`, about 50x the trained weights' magnitude. NF4 scales a block by its
    absmax, and its smallest nonzero level is 0.08 of it (0.16 here), so most of the other weights round to
    0 or to a level far off: with the trained adapter on top, the 4-bit model's loss differs from the full
    one's by 0.024 on this CPU (the test needs 5e-4), far more than any CPU's float noise."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                module.weight.view(-1)[::64] = outlier


def make_cfg(model_dir: Path, tmp_path: Path, quantized: bool) -> Config:
    cfg = compose(["+experiment=smoke", "lora=qlora" if quantized else "lora=default"])
    cfg.model.name_or_path = str(model_dir)
    cfg.models["teacher"].model = str(model_dir)
    cfg.models["base"].model = str(model_dir)
    cfg.lora.dropout = 0.0
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate = 3, 2, 2e-2
    cfg.eval.metrics = ["loss"]
    cfg.paths.adapter_dir = str(tmp_path / "adapter")
    cfg.paths.validated_dir = str(tmp_path / "validated")
    (tmp_path / "validated").mkdir()
    (tmp_path / "validated" / "eval.jsonl").write_text("".join(json.dumps({"messages": d}) + "\n" for d in DIALOGUES))
    return cfg


def train(cfg: Config) -> None:
    """The train stage's backend, and the run record the stage writes next to the adapter."""
    adapter = Path(cfg.paths.adapter_dir)
    report = hf_peft.train(cfg, [{"messages": d} for d in DIALOGUES] * 2, adapter, adapter.parent / "live")
    record = RunRecord(stage="train", params_fingerprint="test", params_sections=["lora"])
    record.details = report.metrics
    record.finish(adapter / "run.json", "success")


def evaluate_stage() -> ModuleType:
    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "src" / "evaluate.py")
    assert spec is not None and spec.loader is not None
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def evaluate(cfg: Config, out: Path) -> dict[str, Any]:
    record = RunRecord(stage="evaluate", params_fingerprint="test", params_sections=["eval"])
    evaluate_stage().main(StageContext(name="evaluate", cfg=cfg, record=record, out_root=out))
    metrics: dict[str, Any] = json.loads((out / cfg.paths.eval_dir / "metrics.json").read_text())
    return metrics


def held_out_loss(model: torch.nn.Module, model_dir: Path) -> float:
    """Mean loss over the assistant tokens of DIALOGUES (no system message, as evaluate scores the
    student), one conversation at a time through the model's own `labels` loss, in train mode: the
    forward training ran (lora.dropout is 0 here, so it is deterministic)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    model.train()
    for dialogue in DIALOGUES:
        messages = [m for m in dialogue if m["role"] != "system"]
        enc: Any = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = torch.tensor([enc["input_ids"]])
        mask = enc["assistant_masks"]
        labels = torch.tensor([[t if m else -100 for t, m in zip(enc["input_ids"], mask, strict=True)]])
        scored = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=labels).loss) * scored
        count += scored
    return total / count


def nf4_base(model_dir: Path) -> PreTrainedModel:
    """The 4-bit base as QLoRA trains on it: lora=qlora's NF4 with double quantization, fp32 compute on CPU."""
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.float32)


def served_options() -> Any:
    from shaping.serve.models import SamplingOptions

    return SamplingOptions(temperature=0.0, top_p=1.0, max_new_tokens=8, stop=(), seed=None)


def full_base(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


@pytest.mark.slow
def test_qlora_adapter_is_scored_on_the_4bit_base(model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(model_dir, tmp_path, quantized=True)
    # conf/lora/qlora.yaml: nf4, double quantization: what nf4_base builds
    assert cfg.lora.quantization == composed("lora=qlora").lora.quantization
    train(cfg)
    metrics = evaluate(cfg, tmp_path / "run")

    on_nf4 = held_out_loss(PeftModel.from_pretrained(nf4_base(model_dir), cfg.paths.adapter_dir), model_dir)
    on_full = held_out_loss(PeftModel.from_pretrained(full_base(model_dir), cfg.paths.adapter_dir), model_dir)
    assert metrics["tuned"]["loss"] == pytest.approx(on_nf4, abs=TOL)
    # the test tells the two apart: the quantisation error moves the loss far more than the tolerance
    assert abs(on_nf4 - on_full) > 100 * TOL
    assert metrics["tuned"]["base_quantization"] == "nf4"
    # the base model is the one users start from: scored unquantized
    assert metrics["base"]["loss"] == pytest.approx(held_out_loss(full_base(model_dir), model_dir), abs=TOL)
    assert metrics["base"]["base_quantization"] == "none"


@pytest.mark.slow
def test_lora_adapter_is_scored_on_the_full_precision_base(model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(model_dir, tmp_path, quantized=False)
    train(cfg)
    metrics = evaluate(cfg, tmp_path / "run")

    on_full = held_out_loss(PeftModel.from_pretrained(full_base(model_dir), cfg.paths.adapter_dir), model_dir)
    assert metrics["tuned"]["loss"] == pytest.approx(on_full, abs=TOL)
    assert metrics["tuned"]["base_quantization"] == "none"
    assert metrics["base"]["loss"] == pytest.approx(held_out_loss(full_base(model_dir), model_dir), abs=TOL)


@pytest.mark.slow
def test_full_fine_tune_is_scored_as_the_saved_model(model_dir: Path, tmp_path: Path) -> None:
    """lora=none: train saves a whole model, and evaluate scores that model (loaded as it was saved, no
    adapter), the base beside it unquantized."""
    cfg = make_cfg(model_dir, tmp_path, quantized=False)
    cfg.lora = compose(["+experiment=smoke", "lora=none"]).lora
    train(cfg)
    metrics = evaluate(cfg, tmp_path / "run")

    tuned = held_out_loss(AutoModelForCausalLM.from_pretrained(cfg.paths.adapter_dir, dtype=torch.float32), model_dir)
    base = held_out_loss(full_base(model_dir), model_dir)
    assert metrics["tuned"]["loss"] == pytest.approx(tuned, abs=TOL) and abs(tuned - base) > 100 * TOL
    assert metrics["base"]["loss"] == pytest.approx(base, abs=TOL)
    assert metrics["tuned"]["base_quantization"] == "none"


@pytest.mark.slow
def test_adapter_trained_with_another_quantization_is_refused(model_dir: Path, tmp_path: Path) -> None:
    """An evaluate run by hand with other lora settings than the adapter's training would score a model
    that was never trained: the adapter's run record says how it was trained, and evaluate stops."""
    cfg = make_cfg(model_dir, tmp_path, quantized=True)
    train(cfg)
    cfg.lora.quantization = None  # e.g. `python src/evaluate.py lora=default` over a QLoRA adapter
    refused = r"run\.json: this adapter was trained as qlora, but lora\.quantization is unset"
    with pytest.raises(ShapingError, match=refused):
        evaluate(cfg, tmp_path / "run")

    # shaping.serve reads the same record: the adapter is refused on a full-precision base, and with
    # --quantization nf4 it runs on the 4-bit base training saw (train mode: the path QLoRA trained on)
    from shaping.serve.models import ServedModels

    adapter = str(cfg.paths.adapter_dir)
    with pytest.raises(ShapingError, match="serve it from a server started with --quantization nf4"):
        ServedModels(str(model_dir), {"q": adapter}, "base", "cpu")
    served = ServedModels(str(model_dir), {"q": adapter}, "base", "cpu", quantization="nf4")
    ids = torch.tensor([AutoTokenizer.from_pretrained(model_dir)("The river runs under the bridge")["input_ids"]])
    with torch.no_grad():
        logits = served.model(input_ids=ids).logits
        on_nf4 = PeftModel.from_pretrained(nf4_base(model_dir), adapter).train()(input_ids=ids).logits
        on_full = PeftModel.from_pretrained(full_base(model_dir), adapter).eval()(input_ids=ids).logits
    assert torch.allclose(logits, on_nf4, atol=1e-5) and (logits - on_full).abs().max() > 1e-2
    reply = served.generate("q", [[{"role": "user", "content": "Who are you?"}]], served_options())[0]
    assert reply.error is None and reply.completion_tokens > 0
