from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from shaping.config import compose, compose_raw, load_params, section_fingerprint
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
