from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.device import cpu_has_native_bf16
from shaping.errors import ShapingError
from shaping.scratch.families import CharTokenizer
from shaping.scratch.pretraining import PretrainReport, build_model, encode_streams, pretrain
from shaping.scratch.tokenizer import IM_END, train_bpe_tokenizer

from .conftest import DIALOGUES, PROSE, REPO, composed

TINY = composed().model  # conf/model/tiny.yaml: each case below changes a few of its values
ARCHS = {
    "llama": replace(
        TINY.architecture,
        family="llama", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    ),
    "gpt2": replace(
        TINY.architecture,
        family="gpt2", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64
    ),
    "char-lstm": replace(
        TINY.architecture,
        family="char-lstm", hidden_size=48, num_layers=2, embedding_size=16, dropout=0.1, tie_word_embeddings=False
    ),
}  # fmt: skip
TEXTS = PROSE + [m["content"] for d in DIALOGUES for m in d]


def test_tokenizer_round_trip_and_assistant_mask() -> None:
    tokenizer = train_bpe_tokenizer(PROSE, vocab_size=300, min_frequency=1)
    for text in ["naïve café — 🌱 seeds\n\n  spaced\tout", "def f(x):\n    return x ** 2"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    enc = tokenizer.apply_chat_template(
        DIALOGUES[0], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    kept = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(kept) == DIALOGUES[0][-1]["content"] + IM_END  # the reply and its stop token


def _run(family: str, seed: int, steps: int = 40) -> tuple[PretrainReport, torch.nn.Module]:
    tokenizer = CharTokenizer.from_texts(TEXTS) if family == "char-lstm" else train_bpe_tokenizer(TEXTS, 300, 1)
    torch.manual_seed(seed)
    model = build_model(ARCHS[family], tokenizer)
    prose, dialogue, starts = encode_streams(tokenizer, PROSE, DIALOGUES * 10)
    held, _, _ = encode_streams(tokenizer, PROSE[:6], [])
    config = replace(
        TINY.pretrain, steps=steps, batch_size=4, block_size=16, warmup_steps=2, eval_interval=10, eval_batches=2
    )
    return pretrain(model, prose, dialogue, starts, config, seed=seed, eval_ids=held), model


@pytest.mark.parametrize("family", ["llama", "gpt2", "char-lstm"])
def test_each_family_trains_with_falling_loss_and_is_seeded(family: str) -> None:
    report, model = _run(family, seed=0)
    again, model_again = _run(family, seed=0)
    evals = [e["eval_loss"] for e in report.evals]
    assert [e["step"] for e in report.evals] == [10, 20, 30, 40]
    assert evals[-1] < evals[0], f"{family}: validation loss should fall, got {evals}"
    assert report.final_loss < 6.0 and report.samples_per_second > 0
    assert abs(report.final_loss - again.final_loss) < 1e-6  # same seed, same loss on CPU
    assert [e["eval_loss"] for e in again.evals] == evals
    for a, b in zip(model.parameters(), model_again.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # precision auto: bf16 where the CPU has bf16 matmuls (AMX or AVX512-BF16), fp32 on other CPUs
    native = "bf16" if cpu_has_native_bf16() else "fp32"
    assert report.best_eval_loss == min(evals) and report.device == "cpu" and report.precision == native
    other, _ = _run(family, seed=1, steps=10)
    assert other.evals[0]["eval_loss"] != report.evals[0]["eval_loss"]  # the seed matters


def test_device_and_precision_errors_are_named() -> None:
    model = build_model(ARCHS["gpt2"], train_bpe_tokenizer(TEXTS, 300, 1))
    cases = (
        {"device": "tpu", "precision": "fp8"} if torch.cuda.is_available() else {"device": "cuda", "precision": "fp16"}
    )
    for key, value in cases.items():
        config = replace(TINY.pretrain, steps=1, batch_size=2, block_size=8, **{key: value})  # type: ignore[arg-type]
        with pytest.raises(ShapingError, match=rf"model\.pretrain\.{key}"):
            pretrain(model, list(range(50)), [], [], config, seed=0)


def test_saved_model_reloads_with_transformers(tiny_model_dir: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert tokenizer.eos_token == IM_END and "generation" in tokenizer.chat_template


def _stage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_char_lstm_pretrains_but_is_refused_as_a_fine_tuning_base(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "prose.txt").write_text("\n\n".join(PROSE))
    (corpus / "dialogues.jsonl").write_text("".join(json.dumps({"messages": d}) + "\n" for d in DIALOGUES * 10))
    common = ["model=char-lstm", f"tokenizer.corpus={corpus}", "tokenizer.holdout_fraction=0.2"]
    run = _stage(
        "src/pretrain.py",
        *common,
        "model.pretrain.steps=12",
        "model.pretrain.batch_size=4",
        "model.pretrain.block_size=32",
        "model.pretrain.eval_interval=4",
        "model.pretrain.checkpoint_interval=5",
        "model.pretrain.sample_prompts=2",
        "model.pretrain.sample_max_new_tokens=8",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "out" / "models" / "pretrain"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["family"] == "char-lstm" and manifest["seed"] == 42 and manifest["device"] == "cpu"
    assert {"char_lstm.json", "model.safetensors", "vocab.json", "samples.jsonl"} <= set(manifest["artifacts"])
    assert "checkpoints/step-000010/model.safetensors" in manifest["artifacts"]  # keep_checkpoints=1: the last
    assert "checkpoints/step-000005/model.safetensors" not in manifest["artifacts"]
    # the resumable states: a finished run deletes its own (the out keeps its README)
    assert [p.name for p in (tmp_path / "out" / "models" / "pretrain_checkpoints").iterdir()] == ["README.txt"]
    assert manifest["metrics"]["resumed_from_step"] == 0
    assert set(manifest["durations"]) == {"train_s", "samples_s", "total_s"}
    assert {"torch", "transformers"} <= set(manifest["versions"])
    metrics = json.loads((tmp_path / "out" / "metrics" / "pretrain.json").read_text())["pretrain"]
    assert metrics["eval_perplexity_last"] < metrics["eval_perplexity_first"]
    assert len((folder / "samples.jsonl").read_text().splitlines()) == 2

    refused = _stage("src/prepare_base.py", *common, f"model.pretrain_dir={folder}", f"hydra.run.dir={tmp_path / 'b'}")
    assert refused.returncode == 1
    output = refused.stdout + refused.stderr
    assert "cannot be a fine-tuning base" in output and "dvc exp run -S model=char-lstm pretrain" in output
    assert "Traceback" not in output


class Killed(Exception):
    pass


def test_pretraining_stopped_mid_checkpoint_resumes_to_the_same_weights_and_curve(tmp_path: Path) -> None:
    """Stopped while it writes its second checkpoint (the model's files written, state.pt not yet: what a kill
    at that moment leaves on disk), pretraining run again on a fresh model resumes from the first checkpoint
    and ends bitwise equal to an uninterrupted run: weights and evaluation curve. char-lstm has dropout, so
    the RNG state must be restored too, and fp32 keeps it quick."""
    tokenizer = CharTokenizer.from_texts(TEXTS)
    prose, dialogue, starts = encode_streams(tokenizer, PROSE, DIALOGUES * 10)
    held, _, _ = encode_streams(tokenizer, PROSE[:6], [])
    config = replace(
        TINY.pretrain, steps=20, batch_size=4, block_size=16, warmup_steps=2, eval_interval=5, eval_batches=1,
        checkpoint_interval=5, keep_checkpoints=1, precision="fp32",
    )  # fmt: skip

    def run(checkpoint_dir: Path | None, save_files: Any = None) -> tuple[PretrainReport, torch.nn.Module]:
        torch.manual_seed(0)
        model = build_model(ARCHS["char-lstm"], tokenizer)
        report = pretrain(
            model, prose, dialogue, starts, config, seed=0, eval_ids=held, checkpoint_dir=checkpoint_dir,
            save_files=save_files,
        )  # fmt: skip
        return report, model

    straight, model = run(None)

    def stop_at_the_second(current: torch.nn.Module, folder: Path) -> None:
        (folder / "weights.pt").write_bytes(b"half")
        if folder.name == "step-000010":
            raise Killed

    states = tmp_path / "states"
    with pytest.raises(Killed):
        run(states, stop_at_the_second)
    assert sorted(p.name for p in states.iterdir()) == ["step-000005", "step-000010"]
    assert not (states / "step-000010" / "state.pt").exists()  # cut short: not a state to resume from
    resumed, model_again = run(states)
    assert resumed.resumed_from_step == 5 and straight.resumed_from_step == 0
    # keep_checkpoints=1: the newest state, step 15, saved by the resumed run without the test's files
    assert [p.name for p in states.iterdir()] == ["step-000015"]
    assert sorted(p.name for p in (states / "step-000015").iterdir()) == ["state.pt"]
    assert resumed.evals == straight.evals and len(straight.evals) == 4
    assert (resumed.best_step, resumed.final_loss) == (straight.best_step, straight.final_loss)
    for a, b in zip(model.state_dict().values(), model_again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
