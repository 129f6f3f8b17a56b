from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
import shutil
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from shaping.config import (
    Config,
    compose,
    compose_raw,
    load_params,
    plain,
    schema,
    section_fingerprint,
    to_config,
)
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


@functools.cache
def _composed_raw(overrides: tuple[str, ...]) -> Any:
    """compose_raw(overrides) as a plain container, once per module (Hydra's compose is the slow part)."""
    return OmegaConf.to_container(compose_raw(overrides))


def _options() -> list[tuple[str, ...]]:
    """Every composition conf/ offers: the defaults, each option of each group, and the experiment overlay."""
    compositions: list[tuple[str, ...]] = [()]
    for group in sorted(p for p in (REPO / "conf").iterdir() if p.is_dir()):
        prefix = "+" if group.name == "experiment" else ""  # an overlay, not in the defaults list
        compositions += [(f"{prefix}{group.name}={option.stem}",) for option in sorted(group.glob("*.yaml"))]
    return compositions


def _entry_type(hint: Any) -> tuple[str, Any] | None:
    """("[]", X) for list[X], (".*", X) for dict[str, X], X a dataclass: a user-extensible container."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and dataclasses.is_dataclass(args[0]):
        return "[]", args[0]
    if origin is dict and dataclasses.is_dataclass(args[1]):
        return ".*", args[1]
    return None


def _unwrap(hint: Any) -> Any:
    """X for `X | None`."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (inner,) = (a for a in typing.get_args(hint) if a is not type(None))
        return inner
    return hint


def _schema_keys(cls: Any, prefix: str = "") -> typing.Iterator[tuple[str, str | None]]:
    """(key, `[]` or `.*` for a container of entries, else None) for every key of the schema, the
    entries' keys under `[]` and `.*`."""
    for name, hint in typing.get_type_hints(cls).items():
        key, hint = f"{prefix}{name}", _unwrap(hint)
        entry = _entry_type(hint)
        yield key, entry[0] if entry else None
        if dataclasses.is_dataclass(hint):
            yield from _schema_keys(hint, f"{key}.")
        elif entry:
            yield from _schema_keys(entry[1], f"{key}{entry[0]}.")


def _drift(node: Any, cls: Any, path: str, generic: str, seen: set[str]) -> typing.Iterator[str]:
    """Keys of the composed `node` (at `path`) that the schema class `cls` lacks, and the reverse. `seen`
    collects the schema keys found, entries' keys written generically (`generic`: `[]`, `.*`)."""
    if not isinstance(node, dict):
        yield f"{path}: a {type(node).__name__} where the schema has {cls.__name__}"
        return
    hints = typing.get_type_hints(cls)
    for name in sorted(hints.keys() - node.keys()):
        yield f"{path}{name}: in the schema ({cls.__name__}), missing from conf/"
    for name in sorted(node.keys() - hints.keys()):
        yield f"{path}{name}: in conf/, not in the schema ({cls.__name__})"
    for name in sorted(hints.keys() & node.keys()):
        value, hint, key = node[name], _unwrap(hints[name]), f"{generic}{name}"
        seen.add(key)
        entry = _entry_type(hint)
        if value is None:
            continue
        if dataclasses.is_dataclass(hint):
            yield from _drift(value, hint, f"{path}{name}.", f"{key}.", seen)
        elif entry:
            seen.update({f"{key}{entry[0]}"} if value else set())  # a container holding at least one entry
            items = enumerate(value) if entry[0] == "[]" else value.items()
            for index, item in items:
                where = f"{path}{name}[{index}]." if entry[0] == "[]" else f"{path}{name}.{index}."
                yield from _drift(item, entry[1], where, f"{key}{entry[0]}.", seen)


def test_schema_and_conf_do_not_drift() -> None:
    """Every composition of conf/ (and the committed params.yaml) holds exactly the schema's keys, the entries
    of the model registry and of lists (dataset.schema, ...) spelling every field; and every schema key is set
    by some composition, but for the fields of entries of a list that conf/ leaves empty (eval.guards)."""
    nodes = {" ".join(o) or "defaults": _composed_raw(o) for o in _options()}
    nodes["params.yaml"] = OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml"))
    assert len(nodes) > 25
    seen: set[str] = set()
    problems = [f"{where}: {p}" for where, node in nodes.items() for p in _drift(node, Config, "", "", seen)]
    assert not problems, "\n".join(problems)
    keys = dict(_schema_keys(Config))
    empty = {f"{key}{entries}." for key, entries in keys.items() if entries and f"{key}{entries}" not in seen}
    unset = {key for key in keys.keys() - seen if not any(key.startswith(c) for c in empty)}
    assert not unset, f"schema keys that no composition of conf/ sets: {sorted(unset)}"
    assert empty == {"eval.guards[].", "train.loss_weights[].", "notify.webhooks[]."}  # [] in conf/: entries unset
    assert {"models.*.options", "train.beta", "dataset.schema[].pattern", "backend.renderer"} <= seen


def test_a_key_left_out_of_conf_is_an_error_naming_it(tmp_path: Path) -> None:
    conf = shutil.copytree(REPO / "conf", tmp_path / "conf")
    sft = conf / "train" / "sft.yaml"
    sft.write_text("".join(line for line in sft.read_text().splitlines(True) if not line.startswith("beta:")))
    with pytest.raises(ShapingError, match=r"conf/: bad key 'train\.beta': .*missing mandatory value"):
        compose(config_dir=conf)
    # a new model file spells every key: the schema has no defaults to fill one in
    hub = (conf / "model" / "qwen2.5-0.5b-instruct.yaml").read_text().splitlines(True)
    (conf / "model" / "bare.yaml").write_text("".join(x for x in hub if not x.startswith("attn_implementation:")))
    with pytest.raises(ShapingError, match=r"bad key 'model\.attn_implementation': .*missing mandatory value"):
        compose(["model=bare"], config_dir=conf)


def test_a_new_registry_entry_needs_only_its_backend_and_model() -> None:
    """Entries of `models` are the user's to add: their optional fields keep defaults in the schema."""
    cfg = compose(["+models.grader.backend=openai", "+models.grader.model=gpt-x", "+models.plain.model=m"])
    assert cfg.models["grader"].backend == "openai" and cfg.models["grader"].max_retries == 6
    assert cfg.models["plain"].backend == "hf" and cfg.models["plain"].options == {}
    with pytest.raises(ShapingError, match=r"bad key 'models\.grader\.backend': .*expected one of \[hf, openai"):
        compose(["+models.grader.backend=anthropic", "+models.grader.model=x"])


@pytest.mark.parametrize(
    ("override", "key", "choices"),
    [
        ("train.method=ppo", "train.method", "sft, dpo, kto, grpo, orpo, distill"),
        ("backend.name=modal", "backend.name", "hf_peft, tinker"),
        ("lora.bias=some", "lora.bias", "none, all, lora_only"),
        ("models.teacher.backend=ollama", "models.teacher.backend", "hf, openai, vllm, tinker"),
        ("train.precision=fp8", "train.precision", "auto, fp32, bf16, fp16"),
        ("model.pretrain.device=tpu", "model.pretrain.device", "auto, cuda, cpu"),
        ("tokenizer.method=wordpiece", "tokenizer.method", "bpe, sentencepiece_unigram, sentencepiece_bpe"),
        ("model.architecture.family=rnn", "model.architecture.family", "llama, gpt2, char-lstm"),
    ],
)
def test_a_value_outside_a_choice_names_the_key_and_the_choices(override: str, key: str, choices: str) -> None:
    with pytest.raises(ShapingError, match=rf"bad key '{re.escape(key)}': .*expected one of \[{re.escape(choices)}\]"):
        compose([override])


def _enums() -> list[type[enum.StrEnum]]:
    return [v for v in vars(schema).values() if isinstance(v, type) and issubclass(v, enum.StrEnum)]


def test_enum_members_behave_like_their_strings() -> None:
    """OmegaConf reads a member by its name and params.yaml writes the name: names are the values. A member
    equals, hashes, formats and JSON-encodes as its string, and shadows no str method."""
    assert len(_enums()) >= 10
    for kind in _enums():
        for member in kind:
            value = member.value
            assert member.name == value and not hasattr(str, value), member
            assert member == value and hash(member) == hash(value) and {value: 1}[member] == 1
            assert f"{member}" == str(member) == value and json.dumps({member: member}) == json.dumps({value: value})
    cfg = compose(["train=dpo", "backend=tinker", "lora=qlora", "model=char-lstm"])
    assert cfg.train.method is schema.TrainMethod.dpo and cfg.train.method == "dpo"
    assert cfg.backend.name in ("tinker",) and cfg.model.architecture is not None
    assert cfg.model.architecture.family == "char-lstm"
    assert cfg.lora.quantization is not None and cfg.lora.quantization.compute_dtype == "auto"


def test_the_typed_config_round_trips_to_params_yaml() -> None:
    """plain() of the typed config is the composition (enums back to their strings): YAML- and JSON-ready."""
    for overrides in _options():
        raw = _composed_raw(overrides)
        assert plain(to_config(OmegaConf.create(raw))) == raw, overrides
    text = yaml.safe_dump(plain(compose()), sort_keys=False)
    assert yaml.safe_load(text) == OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml"))
