from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shaping.config.schema import TokenizerConfig
from shaping.errors import ShapingError
from shaping.scratch.corpus import Corpus, load_corpus, split_corpus
from shaping.scratch.tokenizer import IM_END, IM_START, tokenizer_stats, train_tokenizer

from .conftest import DIALOGUES, PROSE, REPO, composed

TRICKY = [
    "naïve café — 🌱 seeds\n\n  spaced\tout",
    "def f(x):\n    return x ** 2  # squared\n",
    "   leading and trailing   ",
    "日本語のテキスト、emoji 🎉🎉 and ZWJ 👩‍👩‍👧",
    "tabs\t\tand\r\nwindows newlines",
    f"{IM_START}user\nhello{IM_END}",
]
TOY = PROSE + [m["content"] for d in DIALOGUES for m in d] + ["def f(x):\n    return x", "Grüße aus Köln, ça va?"]
METHODS = ["bpe", "sentencepiece_unigram", "sentencepiece_bpe"]


def _train(method: str, **overrides: object) -> TokenizerConfig:
    return dataclasses.replace(
        composed().tokenizer, method=method, vocab_size=400, min_frequency=1, threads=1, **overrides
    )


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_on_tricky_text(method: str) -> None:
    tokenizer = train_tokenizer(_train(method), TOY, seed=0).tokenizer
    for text in TRICKY:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text, (method, text)
    chat = tokenizer(f"{IM_START}user\nhi{IM_END}", add_special_tokens=False)["input_ids"]
    assert chat[0] == tokenizer.convert_tokens_to_ids(IM_START) and chat[-1] == tokenizer.eos_token_id
    assert tokenizer.chat_template and "generation" in tokenizer.chat_template


@pytest.mark.parametrize("method", METHODS)
def test_holdout_stats_on_a_toy_corpus(method: str) -> None:
    train, holdout = split_corpus(Corpus(prose=TOY), 0.2, seed=0)
    trained = train_tokenizer(_train(method), train.texts(), seed=0)
    stats = tokenizer_stats(
        trained.tokenizer, [*holdout.texts(), "Unseen: ζ∑ 🦜"], {c for t in train.texts() for c in t}
    )
    assert stats["documents"] == len(holdout.texts()) + 1
    assert stats["unknown_rate"] == 0.0  # byte-level BPE and byte fallback: nothing is unknown
    assert stats["round_trip_rate"] == 1.0
    assert 0.0 < stats["coverage"] < 1.0  # the unseen characters are not covered
    assert 0.0 < stats["tokens_per_char"] <= 1.0 and stats["tokens_per_word"] >= 1.0
    assert stats["seq_len_p50"] <= stats["seq_len_p90"] <= stats["seq_len_max"]
    if method != "bpe":
        assert stats["byte_fallback_rate"] > 0.0  # the unseen characters fell back to bytes
    assert trained.seconds > 0 and trained.train_bytes == sum(len(t.encode()) for t in train.texts())


def test_normalisation_options() -> None:
    tokenizer = train_tokenizer(_train("bpe", lowercase=True, unicode_normalization="nfkc"), TOY, seed=0).tokenizer
    assert tokenizer.decode(tokenizer("The ﬁRST", add_special_tokens=False)["input_ids"]) == "the first"
    sp = train_tokenizer(_train("sentencepiece_unigram", lowercase=True), TOY, seed=0).tokenizer
    assert sp.decode(sp("The RIVER", add_special_tokens=False)["input_ids"]) == "the river"


def test_bad_tokenizer_configs_are_named() -> None:
    with pytest.raises(ShapingError, match=r"tokenizer\.method"):
        train_tokenizer(_train("wordpiece"), TOY, seed=0)
    with pytest.raises(ShapingError, match=r"tokenizer\.special_tokens"):
        train_tokenizer(_train("bpe", special_tokens=["<|endoftext|>"]), TOY, seed=0)
    with pytest.raises(ShapingError, match="unicode_normalization"):
        train_tokenizer(_train("bpe", unicode_normalization="nfd"), TOY, seed=0)


def test_holdout_split_is_seeded_and_disjoint() -> None:
    corpus = Corpus(
        prose=[f"doc {i}" for i in range(100)], dialogues=[[{"role": "user", "content": str(i)}] for i in range(40)]
    )
    train, holdout = split_corpus(corpus, 0.1, seed=1)
    again, holdout_again = split_corpus(corpus, 0.1, seed=1)
    _, other = split_corpus(corpus, 0.1, seed=2)
    assert holdout == holdout_again and train == again
    assert holdout.prose != other.prose
    assert len(holdout.prose) == 10 and len(holdout.dialogues) == 4
    assert not set(train.prose) & set(holdout.prose)


def test_corpus_from_one_file_or_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("First doc.\n\nSecond doc.\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "Third."}) + "\n" + json.dumps({"messages": DIALOGUES[1]}) + "\n"
    )
    assert load_corpus(tmp_path / "a.txt").prose == ["First doc.", "Second doc."]
    folder = load_corpus(tmp_path)
    assert folder.prose == ["First doc.", "Second doc.", "Third."] and folder.dialogues == [DIALOGUES[1]]
    (tmp_path / "c.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(ShapingError, match=r"c\.jsonl:1"):
        load_corpus(tmp_path)


def test_tokenizer_stage_writes_files_and_manifest(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TOY))
    run = subprocess.run(
        [
            sys.executable,
            "src/train_tokenizer.py",
            "tokenizer=sentencepiece_bpe",
            "tokenizer.vocab_size=400",
            "tokenizer.holdout_fraction=0.2",
            f"tokenizer.corpus={corpus}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "out" / "models" / "tokenizer"
    manifest = json.loads((folder / "tokenizer_manifest.json").read_text())
    assert manifest["method"] == "sentencepiece_bpe" and manifest["seed"] == 42
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_manifest.json"} <= set(manifest["artifacts"])
    assert manifest["holdout"]["round_trip_rate"] == 1.0 and manifest["holdout"]["sentencepiece_agreement"] > 0.9
    assert manifest["training"]["mb_per_second"] > 0
    metrics = json.loads((tmp_path / "out" / "metrics" / "tokenizer.json").read_text())
    assert metrics["tokenizer"]["tokens_per_char"] == manifest["holdout"]["tokens_per_char"]
