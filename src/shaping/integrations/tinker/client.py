"""The Tinker SDK and service: the API key check, the lazy SDK import, the service client, and the
reference file a training run leaves in paths.adapter_dir."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from shaping.errors import ShapingError
from shaping.io import write_json

API_KEY_ENV = "TINKER_API_KEY"
REFERENCE_FILE = "tinker.json"  # what the train stage leaves in paths.adapter_dir for a Tinker run
INSTALL_HINT = "pip install -e '.[tinker]'"
COOKBOOK_HINT = "pip install -e '.[tinker-cookbook]'"
TINKER_SCHEME = "tinker://"


def require_api_key() -> None:
    """Fail before any work when the key is missing; the SDK reads it from the environment."""
    if not os.environ.get(API_KEY_ENV):
        raise ShapingError(
            f"backend=tinker needs a Tinker API key: set the environment variable {API_KEY_ENV} "
            "(it is read from the environment only, never from a config file)"
        )


def import_tinker() -> ModuleType:
    try:
        import tinker
    except ImportError:
        raise ShapingError(f"backend=tinker needs the Tinker SDK: {INSTALL_HINT}") from None
    return tinker


def service_client() -> Any:
    """A tinker.ServiceClient, after checking the key (the SDK reads TINKER_API_KEY itself)."""
    require_api_key()
    return import_tinker().ServiceClient()


@dataclass
class TinkerReference:
    """models/adapter/tinker.json: where the trained weights live on the service, and how to talk to them."""

    model_path: str  # tinker://... sampler weights (save_weights_for_sampler)
    base_model: str
    renderer: str
    state_path: str | None = None  # tinker://... full state (weights + optimizer), to train on from
    steps: int = 0
    sdk_version: str = ""

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> TinkerReference:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ShapingError(f"{path}: not a readable Tinker reference ({err})") from None
        missing = [k for k in ("model_path", "base_model", "renderer") if not saved.get(k)]
        if missing:
            raise ShapingError(f"{path}: missing {', '.join(missing)}; re-run `dvc repro train` with backend=tinker")
        known = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        return cls(**known)
