from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from shaping.errors import ShapingError
from shaping.scratch.families import CharTokenizer, get_family
from shaping.scratch.generation import generate, score
from shaping.scratch.pretraining import build_model
from shaping.scratch.runs import LoadedModel, load_model
from shaping.scratch.tokenizer import END_OF_TEXT

from .conftest import DIALOGUES, PROSE, REPO, composed

KNOWN = "The river runs under the old stone bridge in the morning."


@pytest.fixture(scope="module")
def char_lstm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained char-LSTM saved in its own format (generate/score need no training)."""
    out = tmp_path_factory.mktemp("char-lstm")
    tokenizer = CharTokenizer.from_texts(PROSE + [m["content"] for d in DIALOGUES for m in d])
    torch.manual_seed(0)
    arch = dataclasses.replace(
        composed().model.architecture, family="char-lstm", hidden_size=32, num_layers=1, tie_word_embeddings=True
    )
    get_family("char-lstm").save(build_model(arch, tokenizer), out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(params=["llama", "char-lstm"])
def loaded(request: pytest.FixtureRequest, tiny_model_dir: Path, char_lstm_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir if request.param == "llama" else char_lstm_dir, device="cpu")


def test_greedy_generation_is_reproducible(loaded: LoadedModel) -> None:
    first = generate(loaded.model, loaded.tokenizer, "The river", max_new_tokens=12, temperature=0.0)
    again = generate(loaded.model, loaded.tokenizer, "The river", max_new_tokens=12, temperature=0.0, seed=99)
    assert first == again and len(first) == 1
    assert first[0].tokens_generated <= 12
    assert first[0].stopped_by in {"eos", "max_new_tokens"}


def test_sampling_is_seeded_and_reports_each_sequence(loaded: LoadedModel) -> None:
    def sample(seed: int) -> list[str]:
        outs = generate(
            loaded.model, loaded.tokenizer, "Bread", max_new_tokens=10, temperature=1.5, top_k=50, top_p=0.95,
            seed=seed, num_return_sequences=3, stop_on_eos=False,
        )  # fmt: skip
        assert len(outs) == 3 and all(o.tokens_generated == 10 and not o.eos_terminated for o in outs)
        return [o.text for o in outs]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_stop_sequences_and_eos(char_lstm_dir: Path) -> None:
    run = load_model(char_lstm_dir, device="cpu")
    model, tokenizer = run.model, run.tokenizer
    text = generate(model, tokenizer, "a", max_new_tokens=30, temperature=1.0, seed=0, stop_on_eos=False)[0].text
    stop = text[3:5]
    cut = generate(
        model, tokenizer, "a", max_new_tokens=30, temperature=1.0, seed=0, stop_on_eos=False, stop_sequences=[stop]
    )
    assert cut[0].stopped_by == "stop_sequence" and cut[0].text == text[: text.index(stop)]
    with torch.no_grad():
        model.head.bias[tokenizer.eos_token_id] = 100.0  # type: ignore[union-attr,index]  # EOS always wins
    ended = generate(model, tokenizer, "a", max_new_tokens=30, temperature=0.0)[0]
    assert ended.eos_terminated and ended.stopped_by == "eos" and ended.tokens_generated == 0
    kept_going = generate(model, tokenizer, "a", max_new_tokens=5, temperature=0.0, stop_on_eos=False)[0]
    assert kept_going.tokens_generated == 5 and not kept_going.eos_terminated


def test_score_perplexity_is_exp_loss_on_a_known_text(loaded: LoadedModel) -> None:
    result = score(loaded.model, loaded.tokenizer, KNOWN, detail_level="per_token", top_k=3)
    assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-12)
    assert result.per_token is not None and len(result.per_token) == result.tokens
    assert result.loss == pytest.approx(sum(t.surprisal for t in result.per_token) / result.tokens, abs=1e-5)
    assert "".join(t.token for t in result.per_token) == KNOWN
    assert all(len(t.top) == 3 and t.top[0]["prob"] >= t.top[1]["prob"] for t in result.per_token)
    assert score(loaded.model, loaded.tokenizer, KNOWN).per_token is None  # summary


def test_score_matches_transformers_loss(tiny_model_dir: Path) -> None:
    run = load_model(tiny_model_dir, device="cpu")
    ids = [
        run.tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        *run.tokenizer(KNOWN, add_special_tokens=False)["input_ids"],
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert score(run.model, run.tokenizer, KNOWN).loss == pytest.approx(expected, abs=1e-5)


def test_long_text_is_scored_in_windows(tiny_model_dir: Path) -> None:
    run = load_model(tiny_model_dir, device="cpu")  # max_position_embeddings=256
    long = " ".join(PROSE)
    result = score(run.model, run.tokenizer, long)
    assert result.tokens == len(run.tokenizer(long, add_special_tokens=False)["input_ids"]) > 256


def test_with_a_lora_adapter(tiny_model_dir: Path, char_lstm_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    base = load_model(tiny_model_dir, device="cpu")
    tuned = load_model(tiny_model_dir, adapter=tmp_path / "adapter", device="cpu")
    assert score(tuned.model, tuned.tokenizer, KNOWN).loss != score(base.model, base.tokenizer, KNOWN).loss
    assert generate(tuned.model, tuned.tokenizer, "The", max_new_tokens=5, temperature=0)[0].tokens_generated <= 5
    with pytest.raises(ShapingError, match="not a transformers model"):
        load_model(char_lstm_dir, adapter=tmp_path / "adapter")
    with pytest.raises(ShapingError, match="no model here"):
        load_model(tmp_path)


def test_bad_arguments_are_named(loaded: LoadedModel) -> None:
    with pytest.raises(ShapingError, match="detail_level"):
        score(loaded.model, loaded.tokenizer, KNOWN, detail_level="per_char")
    with pytest.raises(ShapingError, match="top_p"):
        generate(loaded.model, loaded.tokenizer, "x", top_p=0.0)
    with pytest.raises(ShapingError, match="empty"):
        score(loaded.model, loaded.tokenizer, "")


def test_commands_print_json(tiny_model_dir: Path, char_lstm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """generate as a process: its stdout is the JSON alone (loading chatter goes to stderr); score's JSON and
    exit codes in this process (the same main(argv) the script runs)."""
    gen = subprocess.run(
        [sys.executable, "src/generate.py", str(char_lstm_dir), "--prompt", "The", "--max-new-tokens", "5",
         "--num-return-sequences", "2", "--temperature", "0.7", "--seed", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-2000:]
    outputs = json.loads(gen.stdout)["outputs"]
    assert len(outputs) == 2 and {"text", "tokens_generated", "eos_terminated", "stopped_by"} <= set(outputs[0])
    score_cmd = _command("score")
    assert score_cmd.main([str(tiny_model_dir), "--text", KNOWN]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"])) and "per_token" not in report
    assert score_cmd.main([str(tiny_model_dir), "--file", "nope.txt"]) == 1
    missing = capsys.readouterr().err
    assert "nope.txt: file not found" in missing and "Traceback" not in missing


def _command(name: str) -> Any:
    """src/<name>.py as a module, so its main(argv) runs in this process."""
    spec = importlib.util.spec_from_file_location(f"{name}_command", REPO / "src" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_commands_share_loading_and_error_handling(
    tiny_model_dir: Path, random_adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate_cmd, score_cmd = _command("generate"), _command("score")
    no_model = tmp_path / "no-model"
    # score names a missing file before loading the model (a folder that does not exist here)
    assert score_cmd.main([str(no_model), "--file", "nope.txt"]) == 1
    assert capsys.readouterr().err.strip() == "error: nope.txt: file not found"
    assert generate_cmd.main([str(no_model), "--prompt", "x"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"error: {no_model}: no model here (expected config.json, char_lstm.json or reference.json)"
    )
    assert generate_cmd.main([str(tiny_model_dir), "--prompt-file", "nope.txt"]) == 1
    err = capsys.readouterr().err  # transformers' loading progress comes first
    assert err.strip().splitlines()[-1] == "error: nope.txt: file not found" and "Traceback" not in err

    args = [str(tiny_model_dir), "--adapter", str(random_adapter_dir), "--device", "cpu"]
    assert score_cmd.main([*args, "--text", KNOWN]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["model"], scored["adapter"], scored["kind"]) == (
        str(tiny_model_dir),
        str(random_adapter_dir),
        "transformers",
    )
    assert generate_cmd.main([*args, "--chat", "Who are you?", "--max-new-tokens", "4"]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["adapter"] == str(random_adapter_dir) and generated["kind"] == "transformers"
    assert generated["prompt"].endswith("assistant\n") and generated["settings"]["max_new_tokens"] == 4
    assert generated["settings"]["device"] == "cpu" and len(generated["outputs"]) == 1
