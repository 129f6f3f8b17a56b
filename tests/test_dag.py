"""The DAG's staleness is exact: every stage in dvc.yaml lists, as deps, the project code its command
runs (so `dvc repro` re-runs it when that code changes) and nothing it does not run (so it re-runs only
then), and lists the params sections that code reads.

The code a stage runs is found statically: the modules its `cmd` script imports, transitively, over
src/ and pipelines/, counting imports inside functions (lazy ones) and string literals naming a project
module (`importlib.import_module(BACKENDS[...])`, `python -m shaping.serve`), but not imports under
`if TYPE_CHECKING:` (they never run).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shaping.config.schema import Config

from .conftest import REPO

# Shared infrastructure no stage lists as a dep: editing it does not change what a stage computes.
# dvc.yaml's header comment names the same paths with the same reasons (a test below keeps them in sync).
EXEMPT = {
    "src/shaping/__init__.py": "the package root: a docstring and __version__",
    "src/shaping/config/": "its effect reaches stages through params.yaml, which DVC hashes per section",
    "src/shaping/errors.py": "the ShapingError class: messages only",
    "src/shaping/stage.py": "the stage runner: --params parsing, logging setup, the run record",
    "src/shaping/tracking/": "run metadata (git commit, input hashes, versions, timings) for the run record",
    "src/shaping/io.py": "atomic JSON/JSONL writes and reads; the formats are pinned by their own tests",
}

# Where a module name's file lives: shaping.* under src/, pipelines.* and tests.* under the repo root.
SOURCE_ROOTS = (REPO / "src", REPO)
# Config sections a stage reads without listing them in `params:`: `paths` reaches dvc.yaml as the
# deps/outs themselves, and `pipeline` is the synthesize selector passed on its command line.
SECTIONS_NOT_PARAMS = {"paths", "pipeline"}
SECTIONS = {f.name for f in fields(Config)}
# (stage, section) read only by code the stage imports but never calls, with where the read is.
SECTIONS_IMPORTED_NOT_READ = {
    ("synthesize", "eval"): "evaluation's metrics, imported by shaping.inference.tinker (a registry backend)",
    ("synthesize", "model"): "evaluation/metrics/judge.py, imported the same way",
    ("train", "eval"): "evaluation's metrics, imported by shaping.inference.tinker (backend=tinker's renderers)",
    ("train", "models"): "evaluation/registry.py, imported the same way",
}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _module_file(name: str) -> Path | None:
    """The file of project module `name` (a package's __init__.py), or None if it is not ours."""
    if name.split(".")[0] not in ("shaping", "pipelines", "tests"):
        return None
    parts = name.split(".")
    for root in SOURCE_ROOTS:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _module_name(file: Path) -> str:
    rel = file.relative_to(REPO / "src") if file.is_relative_to(REPO / "src" / "shaping") else file.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
            continue
        yield node
        yield from _runtime_nodes(node)


def _with_parents(name: str) -> Iterator[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


@cache
def _direct_imports(file: Path) -> frozenset[Path]:
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    package = _module_name(file) if file.name == "__init__.py" else _module_name(file).rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.update(_with_parents(base))
            # `from pkg import name`: name may be a submodule
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"(shaping|pipelines)(\.\w+)+", node.value)
        ):
            names.update(_with_parents(node.value))
    found = {_module_file(name) for name in names}
    return frozenset(path for path in found if path is not None and path != file)


def _closure(roots: list[Path]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        todo.extend(_direct_imports(file) - seen)
    return seen


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for key in dotted.split("."):
        value = value[key]
    return value


def _interpolate(value: Any, params: dict[str, Any], item: Any = None) -> Any:
    """dvc.yaml's ${...} from params.yaml (and foreach's ${item})."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            key = match.group(1)
            return str(item if key == "item" else _lookup(params, key))

        return re.sub(r"\$\{([^}]+)\}", sub, value)
    if isinstance(value, list):
        return [_interpolate(v, params, item) for v in value]
    if isinstance(value, dict):
        return {_interpolate(k, params, item): _interpolate(v, params, item) for k, v in value.items()}
    return value


def _stages() -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages, foreach ones expanded to `name@item`, interpolated from params.yaml."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for name, stage in dvc_yaml["stages"].items():
        if "foreach" in stage:
            items = _lookup(params, stage["foreach"].strip("${}"))
            for item in items:
                out[f"{name}@{item}"] = _interpolate(stage["do"], params, item)
        else:
            out[name] = _interpolate(stage, params)
    return out


def _deps(stage: dict[str, Any]) -> list[str]:
    return [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]


def _roots(stage: dict[str, Any]) -> list[Path]:
    """The files a stage's command runs: its script, plus what the script loads by name."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    roots: list[Path] = []
    for word in stage["cmd"].split():
        if word.endswith(".py"):
            roots.append(REPO / word)
        elif word.startswith("pipeline="):  # synthesize loads pipelines/<name>.py from a file
            roots.append(REPO / "pipelines" / f"{word.split('=', 1)[1]}.py")
    if any(root.name == "validate.py" for root in roots):  # the gate runs pytest on validation.tests.path
        tests = params["validation"]["tests"]["path"]
        if tests:
            roots.extend(sorted((REPO / tests).rglob("*.py")))
    return roots


def _sections_read(file: Path) -> set[str]:
    """Config sections `file` reads as `cfg.<section>` (also `ctx.cfg.<section>`, `config.<section>`)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in SECTIONS:
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in ("cfg", "config")) or (
                isinstance(owner, ast.Attribute) and owner.attr == "cfg"
            ):
                found.add(node.attr)
    return found


def _covered(path: str, prefixes: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _code_deps(stage: dict[str, Any]) -> list[str]:
    return [d for d in _deps(stage) if d.startswith(("src/", "pipelines/")) or d.endswith(".py")]


STAGES = _stages()


def test_exempt_list_is_documented_in_dvc_yaml() -> None:
    header = (REPO / "dvc.yaml").read_text(encoding="utf-8").split("\nstages:")[0]
    for path in EXEMPT:
        assert path in header, f"dvc.yaml's header comment should name the exempt {path} and why"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(name: str) -> None:
    stage = STAGES[name]
    deps = _deps(stage)
    code = sorted(_rel(f) for f in _closure(_roots(stage)))
    missing = [f for f in code if not _covered(f, deps) and not _covered(f, list(EXEMPT))]
    assert not missing, f"stage {name} runs these files but does not list them (or a folder of them) as deps: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_code_it_runs(name: str) -> None:
    """A code dep the stage does not run would re-run it for nothing; a folder dep must be all run."""
    stage = STAGES[name]
    code = {_rel(f) for f in _closure(_roots(stage))}
    stale = []
    for dep in _code_deps(stage):
        path = REPO / dep
        files = sorted(_rel(f) for f in path.rglob("*.py")) if path.is_dir() else [dep]
        unused = [f for f in files if f not in code]
        if unused:
            stale.append(f"{dep}: {unused}")
    assert not stale, f"stage {name} lists code it never runs: {stale}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_cover_the_sections_its_code_reads(name: str) -> None:
    """Section level only: a stage listing `model.pretrain` is taken to cover every `cfg.model` read."""
    stage = STAGES[name]
    listed = {param.split(".")[0] for param in stage.get("params", [])}
    base = name.split("@")[0]
    read: dict[str, list[str]] = {}
    for file in sorted(_closure(_roots(stage))):
        for section in _sections_read(file):
            read.setdefault(section, []).append(_rel(file))
    unlisted = {
        section: files
        for section, files in read.items()
        if section not in listed | SECTIONS_NOT_PARAMS and (base, section) not in SECTIONS_IMPORTED_NOT_READ
    }
    assert not unlisted, f"stage {name} reads params sections it does not list in `params:`: {unlisted}"
    assert not listed - set(read), f"stage {name} lists params sections its code never reads: {listed - set(read)}"


def test_sections_imported_not_read_are_still_read_somewhere() -> None:
    """The exceptions above stay true: each section is read in the stage's imported code."""
    for (base, section), where in SECTIONS_IMPORTED_NOT_READ.items():
        stage = next(stage for name, stage in STAGES.items() if name.split("@")[0] == base)
        assert any(section in _sections_read(file) for file in _closure(_roots(stage))), f"{base}: {where}"


def test_each_plotted_file_is_drawn_once() -> None:
    """A file that a top-level plot draws is not also under a stage's `plots:` (DVC would draw it
    twice: once labelled, once as a bare file), and every file a top-level plot draws is an out."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    drawn = [
        file
        for plot in _interpolate(dvc_yaml["plots"], params)
        for spec in plot.values()
        for file in (spec["y"] if isinstance(spec["y"], dict) else {})
    ]
    assert len(drawn) >= 4 and len(drawn) == len(set(drawn))

    def paths(stage: dict[str, Any], key: str) -> list[str]:
        return [p if isinstance(p, str) else next(iter(p)) for p in stage.get(key, [])]

    stage_plots = [p for stage in STAGES.values() for p in paths(stage, "plots")]
    outs = [p for stage in STAGES.values() for key in ("outs", "metrics", "plots") for p in paths(stage, key)]
    for file in drawn:
        assert not _covered(file, stage_plots), f"{file}: drawn by a top-level plot and a stage's plots"
        assert _covered(file, outs), f"{file}: drawn, but no stage writes it"
