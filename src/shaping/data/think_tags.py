"""<think>...</think> blocks: validate them, strip them, extract them."""

from __future__ import annotations

import re

OPEN, CLOSE = "<think>", "</think>"
_TAG = re.compile(r"</?think>")
_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def validate_think_tags(text: str) -> tuple[bool, str | None]:
    """(True, None) when every <think> is closed once, with no nesting and no stray </think>.

    Errors: "unclosed_think_tag", "orphaned_close_tags", "nested_think_tags".
    """
    if "think>" not in text:  # the fast path: most rows have no tags at all
        return True, None
    depth = 0
    for match in _TAG.finditer(text):
        if match.group() == OPEN:
            if depth:
                return False, "nested_think_tags"
            depth = 1
        elif depth:
            depth = 0
        else:
            return False, "orphaned_close_tags"
    if depth:
        return False, "unclosed_think_tag"
    return True, None


def strip_thinking(text: str) -> str:
    """The visible reply: complete blocks removed, and anything before an orphaned </think>
    (the model's reasoning when <think> was part of the prompt)."""
    text = _BLOCK.sub("", text)
    if CLOSE in text:
        text = text.rsplit(CLOSE, 1)[1]
    return text.strip()


def extract_thinking(text: str) -> list[str]:
    """The contents of each complete <think> block, in order."""
    return [block.strip() for block in _BLOCK.findall(text)]
