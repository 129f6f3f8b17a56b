"""The `corpus` stage's generator (tools/make_corpus.py + data/corpus_words/) writes the same bytes on
every run, in any process, and those bytes are the pinned corpus: the pretraining figures depend on it,
so an edit to the generator or a word list that changes a single byte has to change these pins too."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "tools" / "make_corpus.py"
PINNED_SHA256 = {
    "prose.txt": "a202596a2ef9a5d9bda1dbc98e9c5375d57e8099f8835a0bfc4b5297e5d79174",
    "dialogues.jsonl": "db03da60bc7cda6baec357e44f1e0a78490e24090ae337bad262d01d88c15326",
}


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in PINNED_SHA256}


def test_the_generator_is_deterministic_and_writes_the_pinned_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("make_corpus", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_corpus", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.main(["--out-dir", str(tmp_path / "in_process")])
    # again in a fresh process with another string-hash seed: no set or dict order leaks into the text
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out-dir", str(tmp_path / "subprocess")],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in (tmp_path / "in_process").iterdir()) == sorted(PINNED_SHA256)
    assert digests(tmp_path / "in_process") == digests(tmp_path / "subprocess") == PINNED_SHA256
