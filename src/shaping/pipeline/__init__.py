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
from shaping.pipeline.base import ExecuteResult, Pipeline, cli_overrides
from shaping.pipeline.loader import load_pipeline_class
from shaping.pipeline.status import RunStatus, status_report

__all__ = [
    "ExecuteResult",
    "FileDep",
    "ModelDep",
    "ModelRequest",
    "ModelResponse",
    "Pipeline",
    "PipelineError",
    "RunStatus",
    "TrainingSample",
    "cli_overrides",
    "load_pipeline_class",
    "model_request",
    "status_report",
]
