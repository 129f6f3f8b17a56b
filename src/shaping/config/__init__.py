"""Configs: typed schema, params.yaml loading, conf/ composition."""

from shaping.config.loading import (
    compose,
    compose_raw,
    find_repo_root,
    load_params,
    plain,
    section_fingerprint,
    to_config,
)
from shaping.config.schema import (
    Config,
    DatasetConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    ModelSpec,
    PathsConfig,
    SynthConfig,
    TrainConfig,
)

__all__ = [
    "Config",
    "DatasetConfig",
    "EvalConfig",
    "LoraConfig",
    "ModelConfig",
    "ModelSpec",
    "PathsConfig",
    "SynthConfig",
    "TrainConfig",
    "compose",
    "compose_raw",
    "find_repo_root",
    "load_params",
    "plain",
    "section_fingerprint",
    "to_config",
]
