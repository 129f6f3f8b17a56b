"""The vllm backend without vLLM (it needs a CUDA host): the error when the extra is missing,
and how a request's options become vllm.SamplingParams fields."""

from __future__ import annotations

import sys

import pytest

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.inference import ModelRegistry
from shaping.inference.vllm import sampling_kwargs

from .conftest import REPO


def test_missing_extra_is_one_clear_error(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, installed or not
    cfg.models["teacher"].backend = "vllm"
    registry = ModelRegistry(cfg.models, root=REPO)
    with pytest.raises(ShapingError, match=r"models\.teacher\.backend=vllm: the vllm package is not installed") as err:
        registry.async_backend("teacher")
    assert "pip install -e '.[vllm]'" in str(err.value)


def test_request_options_map_to_sampling_params() -> None:
    options = {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_new_tokens": 64,
        "min_new_tokens": 4,
        "stop": ("\n\n", "</answer>"),
        "seed": 3,
        "top_k": None,  # unset: vLLM's default
    }
    assert sampling_kwargs("teacher", options) == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "min_tokens": 4,
        "stop": ["\n\n", "</answer>"],
        "seed": 3,
    }
    assert sampling_kwargs("teacher", {"max_completion_tokens": 9, "stop": "."}) == {"max_tokens": 9, "stop": "."}
    with pytest.raises(ShapingError, match=r"models\.teacher: request option 'logit_bias' is not a vLLM sampling"):
        sampling_kwargs("teacher", {"logit_bias": {"1": 5}})
