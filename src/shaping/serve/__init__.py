"""An OpenAI-compatible server over a base model and its LoRA adapters (`python -m shaping.serve`)."""

from shaping.serve.app import create_app
from shaping.serve.launch import running_server
from shaping.serve.models import SamplingOptions, ServedModels

__all__ = ["SamplingOptions", "ServedModels", "create_app", "running_server"]
