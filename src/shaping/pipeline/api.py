"""The user-facing pipeline API: requests, responses, samples, errors, dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shaping.errors import ShapingError
from shaping.inference.types import ChatResponse


class PipelineError(Exception):
    """Abort one record: it becomes an `__ERROR__` record with its steps, and the run goes on."""

    def __init__(self, message: str, error_type: str = "pipeline_error") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


@dataclass
class ModelDep:
    """A model a pipeline uses, by registry short name (`models.<name>`)."""

    name: str


@dataclass
class FileDep:
    """A file or folder a pipeline reads, relative to the repository root."""

    path: str
    root: Path | None = None

    def resolve(self) -> Path:
        return (self.root or Path.cwd()) / self.path

    def paths(self) -> list[Path]:
        """The file itself, or every file under the folder, sorted."""
        target = self.resolve()
        if target.is_dir():
            return sorted(p for p in target.rglob("*") if p.is_file())
        if target.is_file():
            return [target]
        raise ShapingError(f"file_dep {self.path}: not found")

    def read(self) -> str:
        target = self.resolve()
        if not target.is_file():
            raise ShapingError(f"file_dep {self.path}: not a file")
        return target.read_text(encoding="utf-8")


@dataclass
class ModelRequest:
    """What a task yields: one chat completion to run."""

    messages: list[dict[str, str]]
    model: str
    options: dict[str, Any] = field(default_factory=dict)


def model_request(messages: list[dict[str, str]], model: ModelDep | str, **options: Any) -> ModelRequest:
    """Declare one model call; `yield` it from a task to get a ModelResponse back."""
    name = model.name if isinstance(model, ModelDep) else model
    return ModelRequest(messages=[dict(m) for m in messages], model=name, options=options)


@dataclass
class ModelResponse:
    """What a yield returns."""

    model: str
    response: ChatResponse
    messages: list[dict[str, str]] = field(default_factory=list)  # as sent, system prompt included

    @property
    def is_success(self) -> bool:
        return self.response.is_success

    @property
    def finish_reason(self) -> str | None:
        return self.response.finish_reason

    def get_text(self) -> str:
        """The reply's text; a failed request raises PipelineError(error_type='api_error')."""
        if not self.response.is_success or self.response.text is None:
            raise PipelineError(f"request to {self.model} failed: {self.response.error}", error_type="api_error")
        return self.response.text


@dataclass
class TrainingSample:
    """A task's output: one training conversation."""

    id: str
    messages: list[dict[str, str]]
    rejected: str | None = None  # a reply to prefer less than the last one in `messages` (DPO pairs)
    input_data: Any = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    started_at: str | None = None
    completed_at: str | None = None

    def to_dict(self, annotated: bool, pipeline_commit: str | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "messages": self.messages}
        if self.rejected is not None:
            row["rejected"] = self.rejected
        if annotated:
            row.update(
                input_data=self.input_data,
                steps=self.steps,
                pipeline_commit=pipeline_commit,
                started_at=self.started_at,
                completed_at=self.completed_at,
            )
        return row
