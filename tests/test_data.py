from __future__ import annotations

from pathlib import Path

from shaping.data import check_file, split_rows, validate_messages

GOOD = (
    '{"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
)


def test_valid_conversation() -> None:
    assert (
        validate_messages(
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ]
        )
        == []
    )


def test_structure_problems_are_named() -> None:
    assert validate_messages([]) == ["messages: expected a non-empty list"]
    problems = validate_messages([{"role": "user", "content": "u"}, {"role": "assistant", "content": " "}])
    assert problems == ["messages[1].content: empty"]
    problems = validate_messages([{"role": "user", "content": "u"}, {"role": "bot", "content": "a"}])
    assert "messages[1].role: 'bot' is not one of system, user, assistant" in problems
    assert any("last message" in p for p in validate_messages([{"role": "user", "content": "u"}]))
    assert any(
        "in a row" in p
        for p in validate_messages(
            [
                {"role": "user", "content": "u"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ]
        )
    )
    assert any(
        "only come first" in p
        for p in validate_messages(
            [
                {"role": "user", "content": "u"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ]
        )
    )


def test_check_file_reports_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    empty = GOOD.replace('"hello"', '""').replace('"a"', '"b"')
    path.write_bytes((GOOD + "\n" + "{not json\n" + empty + "\r\n" + '{"id": "c", "messages": [').encode())
    result = check_file(path)
    found = {(e.line, e.field) for e in result.errors}
    assert (2, "json") in found
    assert (3, "messages[1].content") in found and (3, "encoding") in found
    assert (4, "json") in found
    assert any("truncated" in e.message for e in result.errors if e.line == 4)
    assert [r["id"] for r in result.rows] == ["a"]


def test_bom_and_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n" + b'{"id": "\xff"}\n')
    errors = {(e.line, e.field) for e in check_file(path).errors}
    assert errors == {(1, "encoding"), (2, "encoding")}


def test_split_is_seeded_and_disjoint() -> None:
    rows = [{"id": str(i)} for i in range(50)]
    train, held = split_rows(rows, 0.1, seed=1)
    assert len(held) == 5 and len(train) == 45
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in held)
    assert split_rows(rows, 0.1, seed=1) == (train, held)
    assert split_rows(rows, 0.1, seed=2) != (train, held)
