"""`dvc repro` reruns exactly what a change touched: one edit at a time on the built smoke repo, the real
`dvc status` names the stages whose own deps or params changed, and those with every stage downstream
of them (`dvc dag`) are the stages `dvc repro` would rerun. Each case checks that set exactly."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import SMOKE, copy_smoke_repo, sh

pytestmark = pytest.mark.slow

SYNTH = "synthesize@identity_distillation"
DOWNSTREAM_OF_SYNTH = {SYNTH, "validate", "train", "evaluate"}


def append_comment(relative: str) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        with (repo / relative).open("a", encoding="utf-8") as f:
            f.write("\n# an edit\n")

    return edit


def append_line(relative: str) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        with (repo / relative).open("a", encoding="utf-8") as f:
            f.write("What would you plant first in a new garden?\n")

    return edit


def conf_key_only_evaluate_reads(repo: Path) -> None:
    """eval.batch_size in conf/, then params.yaml composed again, as `dvc exp run -S` composes it."""
    conf = repo / "conf" / "eval" / "default.yaml"
    text = conf.read_text(encoding="utf-8")
    edited = re.sub(r"(?m)^batch_size: 16\b", "batch_size: 8", text)
    assert edited != text, "conf/eval/default.yaml: no `batch_size: 16` to edit"
    conf.write_text(edited, encoding="utf-8")
    sh(repo, sys.executable, "-m", "shaping.config", SMOKE)


CASES: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "a metric in evaluation/": (append_comment("src/shaping/evaluation/metrics/think_tags.py"), {"evaluate"}),
    "a pipeline file": (append_comment("pipelines/identity_distillation.py"), DOWNSTREAM_OF_SYNTH),
    "the validation code": (
        append_comment("src/shaping/data/validation.py"),
        {"validate", "train", "evaluate"},
    ),
    "the SFT tokenization": (append_comment("src/shaping/training/sft.py"), {"train", "evaluate"}),
    "the Tinker training backend": (
        append_comment("src/shaping/integrations/tinker/training.py"),
        {"train", "evaluate"},
    ),
    "a prompt file": (append_line("data/identity/prompts/nature.txt"), DOWNSTREAM_OF_SYNTH),
    "a conf/ key only evaluate reads": (conf_key_only_evaluate_reads, {"evaluate"}),
}


def downstream(repo: Path) -> dict[str, set[str]]:
    """Each stage's direct dependents, from `dvc dag --dot` (edges `"a" -> "b"`: b reads an out of a)."""
    dot = sh(repo, "dvc", "dag", "--dot").stdout
    edges: dict[str, set[str]] = {}
    for a, b in re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', dot):
        edges.setdefault(a, set()).add(b)
    return edges


def stale_set(repo: Path, edges: dict[str, set[str]]) -> set[str]:
    changed = set(json.loads(sh(repo, "dvc", "status", "--json").stdout))
    todo, seen = list(changed), set(changed)
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def repo(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("staleness") / "repo")


def test_a_built_repo_is_up_to_date(repo: Path) -> None:
    assert json.loads(sh(repo, "dvc", "status", "--json").stdout) == {}
    edges = downstream(repo)
    assert edges[SYNTH] == {"validate"} and edges["train"] == {"evaluate"}  # the DAG the cases assume


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_edit_stales_exactly_what_it_touched(repo: Path, case: str) -> None:
    edit, expected = CASES[case]
    edges = downstream(repo)
    edit(repo)
    try:
        assert stale_set(repo, edges) == expected
    finally:
        sh(repo, "git", "checkout", "--", ".")
    assert json.loads(sh(repo, "dvc", "status", "--json").stdout) == {}
