"""Generation backends behind one protocol, and the model registry."""

from shaping.inference.registry import ModelRegistry
from shaping.inference.types import ChatBackend, ChatRequest, ChatResponse

__all__ = ["ChatBackend", "ChatRequest", "ChatResponse", "ModelRegistry"]
