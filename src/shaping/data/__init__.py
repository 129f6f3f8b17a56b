"""Data: message structure, validation with line numbers, splits."""

from shaping.data.messages import ROLES, validate_messages
from shaping.data.validation import RowError, ValidationResult, check_file, check_row, split_rows

__all__ = [
    "ROLES",
    "RowError",
    "ValidationResult",
    "check_file",
    "check_row",
    "split_rows",
    "validate_messages",
]
