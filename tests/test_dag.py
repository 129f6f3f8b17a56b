"""The DAG's staleness is exact: every stage in dvc.yaml lists, as deps, the project code its command
runs (so `dvc repro` re-runs it when that code changes) and nothing it does not run (so it re-runs only
then), and lists the params sections that code reads.

Code deps are whole packages: a stage lists `src/shaping/<package>` for each package it imports a module
of, and `src/shaping/<module>.py` for each core module (errors, io, stage, device, hub, ...) it imports.
Vendor integrations are listed module by module (`src/shaping/integrations/tinker/training.py`): each
is imported by the one stage that uses it. The code a stage runs is found statically: the modules its
`cmd` script imports, transitively, over src/ and pipelines/, counting imports inside functions (lazy
ones) and string literals naming a project module (`python -m shaping.serve`), but not imports under
`if TYPE_CHECKING:` (they never run). Nothing is exempt: the package root and the config package are
deps of every stage.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from shaping.config.schema import Config

from .conftest import REPO

# Where a module name's file lives: shaping.* under src/, pipelines.* and tests.* under the repo root.
SOURCE_ROOTS = (REPO / "src", REPO)
# Config sections a stage reads without listing them in `params:`: `paths` reaches dvc.yaml as the
# deps/outs themselves, and `pipeline` is the synthesize selector passed on its command line.
SECTIONS_NOT_PARAMS = {"paths", "pipeline"}
# Sections no stage reads: the runs service's (`python -m shaping.runs serve`: notify.webhooks). A stage that
# listed one would re-run when, say, a webhook is added.
SECTIONS_NOT_STAGES = {"notify"}
SECTIONS = {f.name for f in fields(Config)}


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


# Overrides that turn on the stages the default DAG leaves out (a foreach over an empty list there):
# their stages are checked as composed with them.
OPTIONAL_STAGES = (("prompt=gepa",),)


def _optional_params(overrides: tuple[str, ...]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from shaping.config import compose_raw

    return cast(dict[str, Any], OmegaConf.to_container(compose_raw(list(overrides)), resolve=True))


def _stages() -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages, foreach ones expanded to `name@item`, interpolated from params.yaml (and the
    optional stages from the params OPTIONAL_STAGES compose)."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    default = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for params in [default, *(_optional_params(o) for o in OPTIONAL_STAGES)]:
        for name, stage in dvc_yaml["stages"].items():
            if "foreach" in stage:
                items = _lookup(params, stage["foreach"].strip("${}"))
                for item in items:
                    out.setdefault(f"{name}@{item}", _interpolate(stage["do"], params, item))
            else:
                out.setdefault(name, _interpolate(stage, params))
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


def _rebound_config_reads(tree: ast.AST) -> set[int]:
    """The `cfg.<x>` nodes inside functions that rebind `cfg` (or `config`) to a section's part, e.g.
    `cfg = ctx.cfg.eval.claims`: there `cfg.prompt` is eval.claims.prompt, not the `prompt` section."""
    skipped: set[int] = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        rebound = {
            target.id
            for node in ast.walk(fn)
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Attribute)
            and re.search(r"\bcfg\.\w+", ast.unparse(node.value))
            for target in node.targets
            if isinstance(target, ast.Name) and target.id in ("cfg", "config")
        }
        skipped.update(
            id(node)
            for node in ast.walk(fn)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in rebound
        )
    return skipped


def _sections_read(file: Path) -> set[str]:
    """Config sections `file` reads as `cfg.<section>` (also `ctx.cfg.<section>`, `config.<section>`)."""
    found = set()
    tree = ast.parse(file.read_text(encoding="utf-8"))
    skipped = _rebound_config_reads(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Attribute) and node.attr in SECTIONS:
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in ("cfg", "config")) or (
                isinstance(owner, ast.Attribute) and owner.attr == "cfg"
            ):
                found.add(node.attr)
    return found


def _covered(path: str, prefixes: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _unit(file: str) -> str:
    """The dep that covers `file`: its package folder under src/shaping, a core module itself, or an
    integration's module itself."""
    parts = file.split("/")
    if parts[:2] == ["src", "shaping"] and len(parts) > 3 and parts[2] != "integrations":
        return "/".join(parts[:3])
    return file


def _code_deps(stage: dict[str, Any]) -> list[str]:
    return [d for d in _deps(stage) if d.startswith(("src/", "pipelines/")) or d.endswith(".py")]


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_its_script_and_packages(name: str) -> None:
    """Both ways: a package the stage imports and does not list would leave it stale-proof against that
    code; a listed package it never imports would re-run it for nothing."""
    stage = STAGES[name]
    code = {_unit(_rel(f)) for f in _closure(_roots(stage)) if not _rel(f).startswith("tests/")}
    listed = set(_code_deps(stage))
    assert not code - listed, f"stage {name} runs code it does not list as deps: {sorted(code - listed)}"
    assert not listed - code, f"stage {name} lists code it never runs: {sorted(listed - code)}"


def test_training_and_evaluation_stages_do_not_share_what_they_do_not_run() -> None:
    """Editing a metric stales evaluate only; the SFT tokenization stales train (and, downstream, evaluate)."""
    code = {name: set(_code_deps(stage)) for name, stage in STAGES.items()}
    assert "src/shaping/evaluation" not in code["train"]
    assert all("src/shaping/training" not in deps for name, deps in code.items() if name not in ("train", "evaluate"))
    assert all(
        "src/shaping/scratch" not in deps
        for name, deps in code.items()
        if name not in ("tokenizer", "pretrain", "prepare_base")
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_cover_the_sections_its_code_reads(name: str) -> None:
    """Section level only: a stage listing `model.pretrain` is taken to cover every `cfg.model` read."""
    stage = STAGES[name]
    listed = {param.split(".")[0] for param in stage.get("params", [])}
    read: dict[str, list[str]] = {}
    for file in sorted(_closure(_roots(stage))):
        for section in _sections_read(file):
            read.setdefault(section, []).append(_rel(file))
    unlisted = {section: files for section, files in read.items() if section not in listed | SECTIONS_NOT_PARAMS}
    assert not unlisted, f"stage {name} reads params sections it does not list in `params:`: {unlisted}"
    assert not listed - set(read), f"stage {name} lists params sections its code never reads: {listed - set(read)}"


def test_every_params_section_is_read_by_a_stage_or_is_no_stages() -> None:
    """Each section of params.yaml is in some stage's `params:` (or reaches stages without: paths, pipeline),
    or is one no stage reads (SECTIONS_NOT_STAGES) and no stage lists."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    listed = {param.split(".")[0] for stage in STAGES.values() for param in stage.get("params", [])}
    assert set(params) == SECTIONS
    assert not listed & SECTIONS_NOT_STAGES, f"stages list sections no stage reads: {listed & SECTIONS_NOT_STAGES}"
    unread = SECTIONS - listed - SECTIONS_NOT_PARAMS - SECTIONS_NOT_STAGES
    assert not unread, f"params sections no stage lists, and not in SECTIONS_NOT_STAGES: {sorted(unread)}"


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
