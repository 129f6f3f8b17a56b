"""The validation gate's fast path: whole blocks of chat rows decoded by msgspec in one call.

`compile_chat_fast_path` turns `dataset.schema` into msgspec Struct types that accept a row
only if the detailed checks (`shaping.data.schema`, `shaping.data.messages`) would accept it
too; a schema it cannot express exactly gets no fast path. `block_is_plain` is the other
half of that promise: msgspec skips unknown fields without checking what orjson checks
(UTF-8, numbers too large for a double), and treats a trailing CR as whitespace, so a block
that could hold any of those goes through the detailed checks instead. A fast path may only
ever accept less than the detailed checks; everything it refuses is checked line by line,
so error messages are the detailed checks' own.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec

from shaping.config.schema import FieldRule
from shaping.data.messages import ROLES

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1  # orjson reads integers outside this range as floats
_NUMBER_CLASSES = bytes.maketrans(b"123456789E-", b"000000000e+")
_LONG_DIGITS = b"0" * 300  # an integer part of 309 digits overflows a double; 300 keeps a margin


def block_is_plain(block: bytes) -> bool:
    """True when msgspec and orjson agree on every value msgspec skips or reads as Any in `block`.

    Valid UTF-8 (msgspec does not check skipped strings), and no number that could overflow a
    double (orjson rejects those; msgspec skips them or reads them as Python ints).
    """
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return False
    classes = block.translate(_NUMBER_CLASSES)  # digits -> 0, e/E -> e, +/- -> +
    return not (
        _LONG_DIGITS in classes or b"e000" in classes or b"e+000" in classes
    )  # an exponent of 100 or more, or 300 digits in a row: either may overflow


@dataclass
class Decoding:
    """One msgspec decoder for whole blocks of rows, and what its rows look like."""

    decoder: msgspec.json.Decoder[Any]
    needs_plain: bool  # exact only on blocks where `block_is_plain` holds
    pairs: bool  # each row's `.messages` is a (user, assistant) tuple, roles already checked


@dataclass
class FastPath:
    """Compiled types for one schema, cheapest first: `decodings[i].decoder.decode_lines(block)`.

    Strict decoders refuse unknown fields, so they read every value themselves and need no
    `block_is_plain` unless a field holds arbitrary JSON; lenient ones skip unknown fields and
    always need it. Pair decoders accept only a user message then an assistant message, the
    shape of most synthesized rows, so the roles need no check in Python.
    """

    decodings: list[Decoding]
    blank_fields: list[Callable[[Any], Any]]  # string fields that must not be whitespace only


def _string_meta(rule: FieldRule | None, at_least: int) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if rule is None:
        return {"min_length": at_least} if at_least else {}
    lower = max(at_least, rule.min_length or 0, 0 if rule.allow_empty else 1)
    if lower:
        meta["min_length"] = lower
    if rule.max_length is not None:
        meta["max_length"] = rule.max_length
    if rule.pattern is not None:
        meta["pattern"] = rule.pattern
    return meta


def _string_passes(rule: FieldRule, value: str) -> bool:
    """Whether a string value passes every constraint of a string rule (for enum values)."""
    if not rule.allow_empty and not value.strip():
        return False
    if rule.min_length is not None and len(value) < rule.min_length:
        return False
    if rule.max_length is not None and len(value) > rule.max_length:
        return False
    return not (rule.pattern is not None and not re.search(rule.pattern, value))


def _annotate(kind: Any, meta: dict[str, Any]) -> Any:
    return Annotated[kind, msgspec.Meta(**meta)] if meta else kind


def _field_type(rule: FieldRule) -> Any | None:
    """The msgspec type that accepts exactly the values `rule` accepts when present; None if none does."""
    if rule.type == "string":
        if rule.enum is not None:
            if not all(isinstance(v, str) for v in rule.enum):
                return None
            kept = tuple(v for v in dict.fromkeys(rule.enum) if _string_passes(rule, v))
            return Literal[kept] if kept else None
        return _annotate(str, _string_meta(rule, 0))
    if rule.enum is not None:
        return None
    if rule.type in ("integer", "number"):
        low = _INT64_MIN if rule.min is None else max(_INT64_MIN, math.ceil(rule.min))
        high = _UINT64_MAX if rule.max is None else min(_UINT64_MAX, math.floor(rule.max))
        if low > high:
            return None
        integer = Annotated[int, msgspec.Meta(ge=low, le=high)]
        if rule.type == "integer":
            return integer
        bounds = {k: float(v) for k, v in (("ge", rule.min), ("le", rule.max)) if v is not None}
        return integer | _annotate(float, bounds)
    if rule.type == "boolean":
        return bool
    if rule.type in ("object", "array"):
        meta: dict[str, Any] = {}
        if not rule.allow_empty or rule.min_length:
            meta["min_length"] = max(1 if not rule.allow_empty else 0, rule.min_length or 0)
        if rule.max_length is not None:
            meta["max_length"] = rule.max_length
        return _annotate(dict[str, Any] if rule.type == "object" else list[Any], meta)
    return None  # no type: any JSON value, which msgspec cannot constrain the way the rule does


def _is_plain_string_rule(rule: FieldRule | None) -> bool:
    return rule is None or rule.type in (None, "string")


def compile_chat_fast_path(rules: list[FieldRule]) -> FastPath | None:
    """Struct types for chat rows under `rules`, or None when the schema is beyond the fast path.

    Handled: rules on top-level keys, and on `messages[*].role` / `messages[*].content`. Rows with tools
    (a `tool` message, `tool_calls`, a row's `tools`) are always left to the detailed checks.
    """
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        return None
    top: dict[str, FieldRule] = {}
    item: dict[str, FieldRule] = {}
    for rule in rules:
        if rule.name == "tools":
            return None
        if rule.name in ("messages[*].role", "messages[*].content"):
            item[rule.name.rsplit(".", 1)[1]] = rule
        elif re.fullmatch(r"[^.\[\]*]+", rule.name):
            top[rule.name] = rule
        else:
            return None
    role_rule, content_rule = item.get("role"), item.get("content")
    if not (_is_plain_string_rule(role_rule) and _is_plain_string_rule(content_rule)):
        return None
    roles: tuple[str, ...] = ROLES
    if role_rule is not None:
        roles = tuple(
            r for r in ROLES if (role_rule.enum is None or r in role_rule.enum) and _string_passes(role_rule, r)
        )
        if not roles:
            return None
    if content_rule is not None and content_rule.enum is not None:
        return None
    content = _annotate(str, _string_meta(content_rule, 1))
    messages_meta: dict[str, Any] = {"min_length": 1}
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    blank: list[str] = []
    rename: dict[str, str] = {}
    for i, (name, rule) in enumerate(top.items()):
        if name == "messages":
            if rule.type not in (None, "array") or rule.enum is not None:
                return None
            if rule.min_length:
                messages_meta["min_length"] = max(1, rule.min_length)
            if rule.max_length is not None:
                messages_meta["max_length"] = rule.max_length
            continue
        kind = _field_type(rule)
        if kind is None:
            return None
        attr = f"f{i}"
        rename[attr] = name
        if rule.type == "string" and rule.enum is None and not rule.allow_empty:
            blank.append(attr)
        if rule.required:
            fields.append((attr, kind))
        else:
            fields.append((attr, kind | None, None))
    arbitrary = any(rule.type in ("number", "object", "array") for name, rule in top.items() if name != "messages")
    message = _message_type("Message", roles, content)
    shapes: list[tuple[bool, Any]] = []
    if {"user", "assistant"} <= set(roles) and messages_meta["min_length"] <= 2 <= messages_meta.get("max_length", 2):
        user = _message_type("UserMessage", ("user",), content)
        assistant = _message_type("AssistantMessage", ("assistant",), content)
        shapes.append((True, tuple[user, assistant]))  # type: ignore[valid-type]
    shapes.append((False, Annotated[list[message], msgspec.Meta(**messages_meta)]))  # type: ignore[valid-type]
    decodings = []
    for strict in (True, False):
        for pairs, messages in shapes:
            row = msgspec.defstruct(
                "StrictRow" if strict else "Row",
                [("messages", messages), *fields, ("tools", None, None)],
                rename=rename,
                gc=False,
                forbid_unknown_fields=strict,
            )
            decodings.append(Decoding(msgspec.json.Decoder(row), arbitrary or not strict, pairs))
    return FastPath(decodings, [attrgetter(attr) for attr in blank])


def _message_type(name: str, roles: tuple[str, ...], content: Any) -> type[msgspec.Struct]:
    """A message without tools: `tool_calls` and `tool_call_id` absent or null (the detailed checks read those)."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("role", Literal[roles]), ("content", content)]
    fields += [("tool_calls", None, None), ("tool_call_id", None, None)]
    return msgspec.defstruct(name, fields, gc=False)


def roles_are_valid(roles: tuple[str, ...]) -> bool:
    """The role-order rules of `validate_messages`, for roles already known to be in ROLES."""
    if any(role == "system" for role in roles[1:]):
        return False
    turns = [role for role in roles if role != "system"]
    if not turns or turns[0] != "user" or roles[-1] != "assistant":
        return False
    return all(prev != cur for prev, cur in itertools.pairwise(turns))
