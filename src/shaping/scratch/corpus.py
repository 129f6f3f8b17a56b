"""The pretraining corpus: prose documents and chat dialogues, and its seeded holdout split.

A corpus is a folder of files or one file. `*.txt`: documents separated by blank lines.
`*.jsonl`: one object per line, either `{"messages": [{role, content}, ...]}` (a dialogue) or
`{"text": "..."}` (a document).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from shaping.errors import ShapingError
from shaping.io import iter_jsonl

Dialogue = list[dict[str, str]]


@dataclass
class Corpus:
    prose: list[str] = field(default_factory=list)
    dialogues: list[Dialogue] = field(default_factory=list)

    def texts(self) -> list[str]:
        """Every document and every message's content: what a tokenizer trains on."""
        return self.prose + [m["content"] for d in self.dialogues for m in d]

    def num_chars(self) -> int:
        return sum(len(t) for t in self.texts())


def corpus_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ShapingError(f"{path}: corpus not found (tokenizer.corpus: a folder or a .txt/.jsonl file)")
    files = sorted([*path.glob("*.txt"), *path.glob("*.jsonl")])
    if not files:
        raise ShapingError(f"{path}: no *.txt or *.jsonl files in the corpus folder")
    return files


def load_corpus(path: str | Path) -> Corpus:
    corpus = Corpus()
    for file in corpus_files(path):
        if file.suffix == ".jsonl":
            for lineno, row in iter_jsonl(file):
                if isinstance(row.get("text"), str):
                    corpus.prose.append(row["text"])
                    continue
                messages = row.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise ShapingError(f"{file}:{lineno}: expected a non-empty 'messages' list or a 'text' string")
                corpus.dialogues.append(messages)
        else:
            text = file.read_text(encoding="utf-8")
            corpus.prose.extend(p.strip() for p in text.split("\n\n") if p.strip())
    if not corpus.prose and not corpus.dialogues:
        raise ShapingError(f"{path}: the corpus is empty")
    return corpus


def split_corpus(corpus: Corpus, holdout_fraction: float, seed: int) -> tuple[Corpus, Corpus]:
    """(train, holdout): a seeded share of documents and of dialogues, whole, held out."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ShapingError(f"tokenizer.holdout_fraction={holdout_fraction}: must be between 0 and 1")
    rng = random.Random(seed)

    def split(items: list[str] | list[Dialogue]) -> tuple[list[int], set[int]]:
        order = list(range(len(items)))
        rng.shuffle(order)
        held = set(order[: max(1, round(len(items) * holdout_fraction))] if len(items) > 1 else [])
        return [i for i in range(len(items)) if i not in held], held

    prose_train, prose_held = split(corpus.prose)
    dialogue_train, dialogue_held = split(corpus.dialogues)
    train = Corpus([corpus.prose[i] for i in prose_train], [corpus.dialogues[i] for i in dialogue_train])
    holdout = Corpus(
        [corpus.prose[i] for i in sorted(prose_held)], [corpus.dialogues[i] for i in sorted(dialogue_held)]
    )
    return train, holdout
