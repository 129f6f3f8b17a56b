"""Find a Pipeline subclass by name in pipelines/<name>.py."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

from shaping.errors import ShapingError
from shaping.pipeline.base import Pipeline


def load_pipeline_class(name: str, pipelines_dir: Path) -> type[Pipeline]:
    file = pipelines_dir / f"{name}.py"
    if not file.is_file():
        available = ", ".join(sorted(p.stem for p in pipelines_dir.glob("*.py") if not p.stem.startswith("_")))
        raise ShapingError(f"pipeline={name}: no {file} (available: {available or 'none'})")
    spec = importlib.util.spec_from_file_location(f"pipelines.{name}", file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so inspect finds the class's file (its hash goes in the manifest)
    spec.loader.exec_module(module)
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Pipeline)
        and obj is not Pipeline
        and obj.__module__ == module.__name__
    ]
    named = [cls for cls in found if cls.name == name]
    if len(named) == 1:
        return named[0]
    if len(found) == 1:
        return found[0]
    raise ShapingError(
        f"{file}: expected one Pipeline subclass (or one with name = {name!r}), found {[c.__name__ for c in found]}"
    )
