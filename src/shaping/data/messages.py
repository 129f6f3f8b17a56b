"""Chat message structure: what a training conversation must look like.

A conversation is system (optional, first), then user and assistant turns alternating, ending on
the assistant's reply. An assistant turn may call tools the OpenAI way: an assistant message with
`tool_calls` (`[{id, type: "function", function: {name, arguments}}]`, `arguments` a JSON object as
a string, `type` optional; `content` null, a string or absent beside them), then one `tool`
message per call (`{role: tool, tool_call_id: <the call's id>, content: <the result>}`), then the
assistant again (more calls, or its reply). Tool messages and the assistant messages that call
tools are inside the assistant's turn, so alternation is checked on the other messages.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

ROLES = ("system", "user", "assistant")  # a conversation without tools (the gate's fast path takes these)
TOOL = "tool"
ALL_ROLES = (*ROLES, TOOL)
CALL_SHAPE = "{id, type: function, function: {name, arguments}}"


def _check_arguments(value: Any, where: str) -> str | None:
    if not isinstance(value, str):
        return (
            f"{where}: expected a JSON object as a string (OpenAI's shape, '{{}}' for none), got "
            f"{type(value).__name__}; an hf:// source's messages converter writes objects as strings"
        )
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        return f"{where}: not valid JSON ({str(err).split(':')[0]}); write the arguments as a JSON object string"
    if not isinstance(decoded, dict):
        return f"{where}: expected a JSON object, got a JSON {type(decoded).__name__}"
    return None


def _check_calls(calls: Any, where: str, ids: set[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """(problems, [(id, index)] of the valid calls) of one assistant message's `tool_calls`; `ids` are
    the call ids seen so far in the conversation (updated)."""
    if not isinstance(calls, list) or not calls:
        return [f"{where}: expected a non-empty list of tool calls {CALL_SHAPE} (or null)"], []
    problems: list[str] = []
    made: list[tuple[str, int]] = []
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            problems.append(f"{at}: expected an object {CALL_SHAPE}")
            continue
        call_id, kind, function = call.get("id"), call.get("type"), call.get("function")
        if not isinstance(call_id, str) or not call_id.strip():
            problems.append(f"{at}.id: missing; each call needs an id that its tool message's tool_call_id names")
        elif call_id in ids:
            problems.append(f"{at}.id: {call_id!r} is the id of an earlier call; ids are unique in a conversation")
        else:
            ids.add(call_id)
            made.append((call_id, k))
        if kind is not None and kind != "function":
            problems.append(f"{at}.type: {kind!r}; only function calls (type: function)")
        if not isinstance(function, dict):
            problems.append(f"{at}.function: expected {{name, arguments}}")
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{at}.function.name: missing or empty")
        if "arguments" not in function:
            problems.append(f"{at}.function.arguments: missing; a JSON object as a string ('{{}}' for none)")
        elif (problem := _check_arguments(function["arguments"], f"{at}.function.arguments")) is not None:
            problems.append(problem)
    return problems, made


def validate_messages(messages: Any) -> list[str]:
    """Problems with one conversation (empty list = valid), each naming the message index."""
    if not isinstance(messages, list) or not messages:
        return ["messages: expected a non-empty list"]
    problems: list[str] = []
    ids: set[str] = set()  # every call id so far
    calling: int | None = None  # the assistant message whose calls the tool messages now answer
    open_calls: dict[str, str] = {}  # its calls not answered yet: id -> where the call is

    def unanswered() -> None:
        problems.extend(
            f"{at}.id: call {call_id!r} has no tool message answering it (one tool message per call follows "
            "the assistant's message)"
            for call_id, at in open_calls.items()
        )
        open_calls.clear()

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: expected an object with role and content")
            continue
        role, content, calls = message.get("role"), message.get("content"), message.get("tool_calls")
        if role not in ALL_ROLES:
            problems.append(f"{where}.role: {role!r} is not one of {', '.join(ALL_ROLES)}")
        if role != TOOL:
            unanswered()
            calling = None
        if calls is not None:
            if role != "assistant":
                problems.append(f"{where}.tool_calls: only an assistant message calls tools")
            else:
                found, made = _check_calls(calls, f"{where}.tool_calls", ids)
                problems.extend(found)
                calling = i
                open_calls.update((call_id, f"{where}.tool_calls[{k}]") for call_id, k in made)
                if content is not None and not isinstance(content, str):
                    problems.append(f"{where}.content: expected a string or null beside tool_calls")
        elif content is None:
            problems.append(f"{where}.content: missing (only an assistant message with tool_calls may leave it out)")
        elif not isinstance(content, str):
            problems.append(f"{where}.content: expected a string, got {type(content).__name__}")
        elif not content.strip():
            problems.append(f"{where}.content: empty")
        call_id = message.get("tool_call_id")
        if role == TOOL:
            if calling is None:
                problems.append(f"{where}: a tool message must answer an assistant message's tool_calls")
            elif not isinstance(call_id, str) or not call_id:
                problems.append(f"{where}.tool_call_id: missing; name the id of the call it answers")
            elif call_id in open_calls:
                del open_calls[call_id]
            elif call_id in ids:
                problems.append(
                    f"{where}.tool_call_id: {call_id!r} is answered twice, or answers an earlier turn's call"
                )
            else:
                problems.append(f"{where}.tool_call_id: {call_id!r} answers no call of messages[{calling}]")
        elif call_id is not None:
            problems.append(f"{where}.tool_call_id: only a tool message answers a call")
        if role == "system" and i != 0:
            problems.append(f"{where}: a system message may only come first")
    unanswered()
    if problems:
        return problems
    # the turns that alternate: tool messages and calling assistant messages belong to the assistant's turn
    turns = [m["role"] for m in messages if m["role"] not in ("system", TOOL) and m.get("tool_calls") is None]
    for i, (prev, cur) in enumerate(itertools.pairwise(turns)):
        if prev == cur:
            problems.append(
                f"messages: two {cur} turns in a row (turn {i + 1} and {i + 2}); user and assistant alternate"
            )
    if not turns or turns[0] != "user":
        problems.append("messages: the first turn after any system message must be the user's")
    if messages[-1]["role"] != "assistant":
        problems.append("messages: the last message must be the assistant's")
    elif messages[-1].get("tool_calls") is not None:
        problems.append("messages: the last message must be the assistant's reply, not a tool call")
    return problems
