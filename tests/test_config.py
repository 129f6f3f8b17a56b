from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from shaping.config import Config, ModelConfig, compose, compose_raw, load_params, section_fingerprint
from shaping.errors import ShapingError

from .conftest import REPO


def test_committed_params_equal_a_fresh_composition() -> None:
    committed = OmegaConf.load(REPO / "params.yaml")
    fresh = compose_raw()
    assert OmegaConf.to_container(committed) == OmegaConf.to_container(fresh), (
        "params.yaml is stale: run `make params` (python -m shaping.config) and commit it"
    )


def test_overrides_reach_the_typed_config() -> None:
    cfg = compose(["lora.r=16", "model=qwen2.5-0.5b-instruct"])
    assert cfg.lora.r == 16
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.model.from_scratch is False
    assert cfg.models["teacher"].model == "Qwen/Qwen2.5-0.5B-Instruct"  # interpolation follows the model


def test_typo_key_is_an_error_naming_the_key() -> None:
    with pytest.raises(ShapingError, match=r"rr"):
        compose(["lora.rr=4"])


def test_unknown_key_in_params_file_is_named(tmp_path: Path) -> None:
    raw = OmegaConf.to_container(compose_raw())
    assert isinstance(raw, dict)
    raw["train"]["learning_rat"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(OmegaConf.to_yaml(raw))
    with pytest.raises(ShapingError, match=r"params\.yaml: bad key 'train\.learning_rat'"):
        load_params(path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ShapingError, match=r"lora\.r"):
        compose(["lora.r=eight"])


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ShapingError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_fingerprint_tracks_only_named_sections() -> None:
    a, b = compose(), compose(["lora.r=32"])
    assert section_fingerprint(a, ["dataset"]) == section_fingerprint(b, ["dataset"])
    assert section_fingerprint(a, ["lora"]) != section_fingerprint(b, ["lora"])


def test_every_config_group_option_composes() -> None:
    for group in ("model", "lora", "backend", "models", "synth", "dataset", "train", "eval"):
        for option in sorted((REPO / "conf" / group).glob("*.yaml")):
            compose([f"{group}={option.stem}"])


def test_malformed_conf_yaml_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text('seed: "unclosed\n')
    with pytest.raises(ShapingError, match=r"not valid YAML"):
        compose(config_dir=tmp_path)


def _schema_default(path: tuple[str, ...]) -> Any:
    """The schema's default for a dotted key (nested dataclasses, `X | None` ones included)."""
    cls: Any = Config
    for depth, key in enumerate(path):
        field = {f.name: f for f in dataclasses.fields(cls)}[key]
        if depth == len(path) - 1:
            if field.default is not dataclasses.MISSING:
                return field.default
            assert field.default_factory is not dataclasses.MISSING
            return field.default_factory()
        hint = typing.get_type_hints(cls)[key]
        cls = next(t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t))
    raise AssertionError(path)


def _leaves(node: Any, path: tuple[str, ...] = ()) -> typing.Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, node


def test_schema_defaults_are_what_conf_sets_everywhere() -> None:
    """A key every option of a group sets to one value has that value as its schema default, so an
    option file (or a new one) that leaves the key out gets what the others say."""
    paths = OmegaConf.to_container(compose_raw().paths)
    assert isinstance(paths, dict)
    seen: dict[tuple[str, ...], list[Any]] = {}
    for group_dir in sorted(p for p in (REPO / "conf").iterdir() if p.is_dir()):
        if group_dir.name in ("accelerate", "experiment", "models"):  # free-form dicts / overlays, no schema defaults
            continue
        for option in sorted(group_dir.glob("*.yaml")):
            raw = OmegaConf.to_container(OmegaConf.load(option))
            assert isinstance(raw, dict)
            raw.pop("defaults", None)
            for key, value in _leaves(raw):
                seen.setdefault((group_dir.name, *key), []).append(value)
    checked = 0
    for key, values in seen.items():
        if len(values) < 2 or any(v != values[0] for v in values):
            continue
        value = values[0]
        if isinstance(value, str) and value.startswith("${paths."):  # resolve against conf/config.yaml's paths
            value = paths[value.removeprefix("${paths.").rstrip("}")]
        assert _schema_default(key) == value, f"{'.'.join(key)}: schema default differs from conf/ ({value!r})"
        checked += 1
    assert checked > 20  # the model and tokenizer groups alone share this many keys


def test_model_schema_defaults_are_what_the_hub_model_configs_set() -> None:
    """conf/model's hub models say attn_implementation: auto; a model file without the key gets the same."""
    models = [OmegaConf.to_container(OmegaConf.load(f)) for f in sorted((REPO / "conf" / "model").glob("*.yaml"))]
    hub = [m for m in models if isinstance(m, dict) and not m["from_scratch"]]
    assert len(hub) >= 2
    for key in ("from_scratch", "dtype", "attn_implementation", "chat_template", "trust_remote_code"):
        assert {m[key] for m in hub} == {getattr(ModelConfig(), key)}, key


def test_a_model_file_without_attn_implementation_gets_auto(tmp_path: Path) -> None:
    conf = shutil.copytree(REPO / "conf", tmp_path / "conf")
    (conf / "model" / "bare.yaml").write_text("name: bare\nname_or_path: some/hub-model\n")
    assert compose(["model=bare"], config_dir=conf).model.attn_implementation == "auto"
