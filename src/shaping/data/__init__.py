"""Data: message structure, think tags, schema rules, the validation gate, splits."""

from shaping.data.messages import ROLES, validate_messages
from shaping.data.schema import compile_schema
from shaping.data.think_tags import extract_thinking, strip_thinking, validate_think_tags
from shaping.data.validation import Gate, RowError, check_file, choose_split, write_split

__all__ = [
    "ROLES",
    "Gate",
    "RowError",
    "check_file",
    "choose_split",
    "compile_schema",
    "extract_thinking",
    "strip_thinking",
    "validate_messages",
    "validate_think_tags",
    "write_split",
]
