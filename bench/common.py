"""What the bench scripts share: the demo's pretraining corpus, built where a fresh clone lacks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shaping.errors import ShapingError
from shaping.scratch.corpus import Corpus, corpus_files, load_corpus


def demo_corpus(path: str = "data/corpus") -> Corpus:
    """The corpus at `path`; where it holds no files yet (a fresh clone), the DAG's `corpus` stage
    makes it first (`dvc repro corpus`, a few seconds, no params)."""
    try:
        corpus_files(Path(path))
    except ShapingError:
        print(f"{path} is empty: running `dvc repro corpus` first", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "dvc", "repro", "--quiet", "corpus"], check=True)
    return load_corpus(path)
