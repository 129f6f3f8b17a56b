"""Load the typed config: from params.yaml (DVC) or by composing conf/ (Hydra, by hand)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from shaping.config.schema import Config
from shaping.errors import ShapingError


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding conf/config.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / "config.yaml").is_file():
            return folder
    raise ShapingError(f"no conf/config.yaml in {here} or any parent: run from the shaping repository")


def to_config(raw: DictConfig | dict[str, Any], source: str = "config") -> Config:
    """Check `raw` against the schema and return the typed Config.

    Unknown keys, wrong types, values outside an enum's choices and keys that `raw` leaves out
    (every section key is required: the values live in conf/) raise ShapingError naming `source`
    and the full key. Enum fields hold their StrEnum members (equal to their strings).
    """
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, raw)
        OmegaConf.resolve(merged)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ShapingError(f"{source}: bad key '{key}': {reason}") from None
    assert isinstance(cfg, Config)
    return cfg


def compose(overrides: Iterable[str] = (), config_dir: Path | None = None) -> Config:
    """Compose conf/ with Hydra overrides, as DVC does for params.yaml."""
    raw = compose_raw(overrides, config_dir)
    return to_config(raw, source="conf/")


def compose_raw(overrides: Iterable[str] = (), config_dir: Path | None = None) -> DictConfig:
    """The resolved DictConfig exactly as `dvc exp run -S` would write it to params.yaml."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    conf = (config_dir or find_repo_root() / "conf").resolve()
    try:
        with initialize_config_dir(str(conf), version_base=None):
            raw = hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as err:
        raise ShapingError(f"{conf}: {err}") from None
    except yaml.YAMLError as err:  # a hand-edited conf/ file that is not valid YAML
        raise ShapingError(f"{conf}: not valid YAML: {err}") from None
    OmegaConf.resolve(raw)
    return raw


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Config:
    """Read params.yaml (what DVC hashed) and apply dotlist `overrides` (stage selectors only)."""
    path = Path(path)
    if not path.is_file():
        raise ShapingError(f"{path}: not found. Compose it with `dvc exp run` or `python -m shaping.config`")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ShapingError(f"{path}: not valid YAML: {err}") from None
    assert isinstance(raw, DictConfig)
    extra = list(overrides)
    merged = OmegaConf.merge(raw, OmegaConf.from_dotlist(extra)) if extra else raw
    assert isinstance(merged, DictConfig)
    return to_config(merged, source=str(path))


def plain(obj: Any) -> Any:
    """A config dataclass (or a dict/list holding them) as plain dicts, lists and scalars, enum members
    as their strings: for writers that take no str subclass (PyYAML's and DVCLive's safe dumpers)."""
    return OmegaConf.to_container(OmegaConf.create(obj), resolve=True, enum_to_str=True)


def section_fingerprint(cfg: Config, sections: Iterable[str]) -> str:
    """SHA-256 of the named top-level sections, canonical JSON: what a stage's result depends on."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    chosen = {name: container.get(name) for name in sorted(sections)}
    blob = json.dumps(chosen, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
