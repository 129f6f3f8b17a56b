"""Data-contract tests: the validate stage runs this folder with pytest.main, in process, and
puts the files it is checking in $SHAPING_DATASET_FILES. The main suite does not collect it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest


@pytest.fixture(scope="session")
def dataset_rows() -> list[dict[str, Any]]:
    listed = os.environ.get("SHAPING_DATASET_FILES")
    if not listed:
        pytest.fail("SHAPING_DATASET_FILES is not set: run these tests through `python src/validate.py`")
    rows = []
    for name in listed.split(os.pathsep):
        path = Path(name)
        if path.is_file():
            for raw in path.open("rb"):
                try:
                    rows.append(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    continue  # the gate reports malformed lines itself
    return rows
