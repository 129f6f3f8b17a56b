"""Synthesis pipelines: `Pipeline` subclasses whose generator tasks yield model requests."""

from shaping.pipeline.api import (
    FileDep,
    ModelDep,
    ModelRequest,
    ModelResponse,
    PipelineError,
    TrainingSample,
    model_request,
)
from shaping.pipeline.base import ExecuteResult, Pipeline
from shaping.pipeline.loader import load_pipeline_class

__all__ = [
    "ExecuteResult",
    "FileDep",
    "ModelDep",
    "ModelRequest",
    "ModelResponse",
    "Pipeline",
    "PipelineError",
    "TrainingSample",
    "load_pipeline_class",
    "model_request",
]
