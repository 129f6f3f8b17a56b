"""Schema rules from `dataset.schema`, compiled once into fast per-row checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from shaping.config.schema import FieldRule
from shaping.errors import ShapingError

TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
_MISSING = object()

Check = Callable[[dict[str, Any]], list[tuple[str, str]]]


def _parse_path(name: str) -> list[str]:
    """`messages[*].role` -> ["messages", "*", "role"]."""
    parts: list[str] = []
    for piece in name.split("."):
        if piece.endswith("[*]"):
            parts.extend([piece[:-3], "*"])
        elif piece:
            parts.append(piece)
        else:
            raise ShapingError(f"dataset.schema: bad field name {name!r}")
    return parts


def _values(obj: Any, parts: list[str], where: str) -> list[tuple[str, Any]]:
    """(path, value) for every value `parts` reaches; _MISSING where a key is absent."""
    if not parts:
        return [(where, obj)]
    head, rest = parts[0], parts[1:]
    if head == "*":
        if not isinstance(obj, list):
            return []  # the list's own rule reports its type
        found: list[tuple[str, Any]] = []
        for i, item in enumerate(obj):
            found.extend(_values(item, rest, f"{where}[{i}]"))
        return found
    path = f"{where}.{head}" if where else head
    if not isinstance(obj, dict):
        return []
    value = obj.get(head, _MISSING)
    if value is _MISSING:
        return [(path, _MISSING)]
    return _values(value, rest, path)


def _value_checks(rule: FieldRule) -> Callable[[str, Any, list[tuple[str, str]]], None]:
    """One function that checks a present value against every constraint the rule sets."""
    kinds = TYPES[rule.type] if rule.type else None
    strict_bool = kinds is not None and bool not in kinds  # True is an int in Python; not in a schema
    pattern = re.compile(rule.pattern) if rule.pattern else None
    enum = set(rule.enum) if rule.enum is not None else None
    bounded = rule.min is not None or rule.max is not None
    sized = rule.min_length is not None or rule.max_length is not None

    def check(path: str, value: Any, problems: list[tuple[str, str]]) -> None:
        if kinds is not None and (not isinstance(value, kinds) or (strict_bool and isinstance(value, bool))):
            problems.append((path, f"expected {rule.type}, got {type(value).__name__}"))
            return
        if not rule.allow_empty and (
            not value if isinstance(value, list | dict) else isinstance(value, str) and not value.strip()
        ):
            problems.append((path, "empty"))
            return
        if bounded and isinstance(value, int | float) and not isinstance(value, bool):
            if rule.min is not None and value < rule.min:
                problems.append((path, f"{value} is below the minimum {rule.min}"))
            if rule.max is not None and value > rule.max:
                problems.append((path, f"{value} is above the maximum {rule.max}"))
        if sized and isinstance(value, str | list | dict):
            if rule.min_length is not None and len(value) < rule.min_length:
                problems.append((path, f"length {len(value)} is below min_length {rule.min_length}"))
            if rule.max_length is not None and len(value) > rule.max_length:
                problems.append((path, f"length {len(value)} is above max_length {rule.max_length}"))
        if pattern is not None and isinstance(value, str) and not pattern.search(value):
            problems.append((path, f"does not match pattern {rule.pattern!r}"))
        if enum is not None and value not in enum:
            problems.append((path, f"{value!r} is not one of {sorted(map(str, enum))}"))

    return check


RuleCheck = Callable[[dict[str, Any], list[tuple[str, str]]], None]


def compile_rule(rule: FieldRule) -> RuleCheck:
    """A check that appends (path, message) for each problem; fast paths for `key` and `list[*].key`."""
    if rule.type is not None and rule.type not in TYPES:
        raise ShapingError(f"dataset.schema[{rule.name}].type={rule.type!r}: choose one of {', '.join(TYPES)}")
    parts = _parse_path(rule.name)
    check_value = _value_checks(rule)
    required = rule.required

    def present(path: str, value: Any, problems: list[tuple[str, str]]) -> None:
        if value is None or value is _MISSING:
            if required:
                problems.append((path, "required field is missing"))
        else:
            check_value(path, value, problems)

    if len(parts) == 1:
        (key,) = parts

        def top_level(row: dict[str, Any], problems: list[tuple[str, str]]) -> None:
            present(key, row.get(key, _MISSING), problems)

        return top_level
    if len(parts) == 3 and parts[1] == "*" and parts[2] != "*":
        outer, inner = parts[0], parts[2]

        def each_item(row: dict[str, Any], problems: list[tuple[str, str]]) -> None:
            items = row.get(outer)
            if not isinstance(items, list):
                return  # the list's own rule reports its type
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    present(f"{outer}[{i}].{inner}", item.get(inner, _MISSING), problems)

        return each_item

    def general(row: dict[str, Any], problems: list[tuple[str, str]]) -> None:
        for path, value in _values(row, parts, ""):
            present(path, value, problems)

    return general


def compile_schema(rules: list[FieldRule]) -> Check:
    checks = [compile_rule(rule) for rule in rules]

    def check(row: dict[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for one in checks:
            one(row, problems)
        return problems

    return check
