"""Chat message structure: what a training conversation must look like."""

from __future__ import annotations

import itertools
from typing import Any

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Any) -> list[str]:
    """Problems with one conversation (empty list = valid), each naming the message index."""
    if not isinstance(messages, list) or not messages:
        return ["messages: expected a non-empty list"]
    problems: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: expected an object with role and content")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            problems.append(f"{where}.content: expected a string, got {type(content).__name__}")
        elif not content.strip():
            problems.append(f"{where}.content: empty")
        if role == "system" and i != 0:
            problems.append(f"{where}: a system message may only come first")
    if problems:
        return problems
    turns = [m["role"] for m in messages if m["role"] != "system"]
    for i, (prev, cur) in enumerate(itertools.pairwise(turns)):
        if prev == cur:
            problems.append(
                f"messages: two {cur} turns in a row (turn {i + 1} and {i + 2}); user and assistant alternate"
            )
    if not turns or turns[0] != "user":
        problems.append("messages: the first turn after any system message must be the user's")
    if messages[-1]["role"] != "assistant":
        problems.append("messages: the last message must be the assistant's")
    return problems
