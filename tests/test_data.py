from __future__ import annotations

import dataclasses
import functools
import io
import json
from pathlib import Path
from typing import Any

import pytest

from shaping.config import compose
from shaping.config.schema import DatasetConfig, FieldRule, QualityConfig
from shaping.data import Gate, check_file, choose_split, compile_schema, validate_messages, write_split
from shaping.errors import ShapingError


@functools.cache
def _conf_sections() -> tuple[DatasetConfig, QualityConfig]:
    cfg = compose()
    return cfg.dataset, cfg.validation.quality


def dataset_config(**changes: Any) -> DatasetConfig:
    """conf/'s dataset section without its schema rules (the built-in chat checks only), `changes` applied."""
    return dataclasses.replace(_conf_sections()[0], **{"schema": [], **changes})


def quality_config(**changes: Any) -> QualityConfig:
    """conf/'s gate thresholds without its error patterns (a test names those it counts), `changes` applied."""
    return dataclasses.replace(_conf_sections()[1], **{"error_patterns": [], **changes})


def chat(rid: str, reply: str = "hello there", prompt: str = "hi") -> str:
    return json.dumps(
        {
            "id": rid,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
        }
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
    assert "messages[1].role: 'bot' is not one of system, user, assistant, tool" in problems
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


def test_schema_rules() -> None:
    check = compile_schema(
        [
            FieldRule(name="id", type="string", required=True, allow_empty=False, pattern=r"^[a-z]+-\d+$"),
            FieldRule(name="score", type="number", min=0, max=1),
            FieldRule(name="tags", type="array", max_length=2),
            FieldRule(name="messages[*].role", type="string", required=True, enum=["user", "assistant"]),
            FieldRule(name="messages[*].content", type="string", min_length=2),
        ]
    )
    ok = {"id": "a-1", "score": 0.5, "tags": [], "messages": [{"role": "user", "content": "hi"}]}
    assert check(ok) == []
    bad: dict[str, Any] = {
        "id": "A1",
        "score": 2,
        "tags": [1, 2, 3],
        "messages": [{"role": "bot", "content": "x"}, {"content": "yo"}],
    }
    found = dict(check(bad))
    assert "does not match pattern" in found["id"]
    assert "above the maximum" in found["score"]
    assert "above max_length" in found["tags"]
    assert "not one of" in found["messages[0].role"]
    assert found["messages[1].role"] == "required field is missing"
    assert "below min_length" in found["messages[0].content"]
    assert dict(check({"id": 5, "messages": []}))["id"] == "expected string, got int"
    assert dict(check({"id": "", "messages": []}))["id"] == "empty"
    assert dict(check({"id": "a-1", "score": True, "messages": []}))["score"] == "expected number, got bool"


def test_bad_rule_type_is_named() -> None:
    with pytest.raises(ShapingError, match=r"dataset\.schema\[x\]\.type='str'"):
        compile_schema([FieldRule(name="x", type="str")])


def test_six_kinds_of_bad_row_each_reported_by_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    lines = [
        chat("ok-1"),
        "{not json",  # 2: bad JSON
        json.dumps({"messages": json.loads(chat("x"))["messages"]}),  # 3: missing id
        chat("e-1", reply=""),  # 4: empty assistant content
        chat("t-1", reply="<think>never closed"),  # 5: unclosed think tag
        json.dumps(
            {
                "id": "o-1",
                "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}],
            }
        ),  # 6: wrong role order
        json.dumps({"id": 7, "messages": json.loads(chat("x"))["messages"]}),  # 7: wrong type
    ]
    path.write_text("\n".join(lines) + "\n")
    rows, errors = check_file(
        path, dataset_config(schema=[FieldRule(name="id", type="string", required=True)]), quality_config()
    )
    by_line = {e.line: (e.field, e.message) for e in errors}
    assert len({e.line for e in errors}) == 6
    assert by_line[2][0] == "json"
    assert by_line[3] == ("id", "required field is missing")
    assert by_line[4] == ("messages[1].content", "empty")
    assert by_line[5] == ("messages[1].content", "think tags: unclosed_think_tag")
    assert any("the first turn" in e.message and "user" in e.message for e in errors if e.line == 6)
    assert by_line[7] == ("id", "expected string, got int")
    assert [r["id"] for r in rows] == ["ok-1"]


def test_encoding_problems_by_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + chat("a").encode()
        + b"\n"
        + b'{"id": "\xff"}\n'
        + chat("c").encode()
        + b"\r\n"
        + b'{"id": "d", "messages": ['
    )
    rows, found = check_file(path, dataset_config(), quality_config())
    assert [r["id"] for r in rows] == ["a", "c"]  # read back without the BOM and the CR
    errors = {(e.line, e.field): e.message for e in found}
    assert set(errors) == {(1, "encoding"), (2, "encoding"), (3, "encoding"), (4, "json")}
    assert "byte-order mark" in errors[(1, "encoding")] and "UTF-8" in errors[(2, "encoding")]
    assert "CRLF" in errors[(3, "encoding")] and "truncated" in errors[(4, "json")]


def test_preference_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"id": "1", "prompt": "p", "chosen": "good", "rejected": "bad"},
        {"id": "2", "prompt": "p", "chosen": "same", "rejected": " same "},
        {"id": "3", "prompt": "p", "chosen": "", "rejected": "bad"},
        {
            "id": "4",
            "prompt": [{"role": "user", "content": "p"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    valid, errors = check_file(path, dataset_config(format="preference"), quality_config())
    assert [r["id"] for r in valid] == ["1", "4"]
    assert {(e.line, e.field) for e in errors} == {(2, "rejected"), (3, "chosen")}


def test_quality_figures(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    lines = [chat(str(i), reply=f"reply number {i} about seeds") for i in range(8)]
    lines += [chat("dup", reply="reply number 0 about seeds")]  # the same conversation as row 0
    lines += [chat("near", reply="Reply number 1, about seeds!", prompt="other")]  # near-duplicate reply
    lines += [chat("err", reply="Error: 500 upstream")]
    path.write_text("\n".join(lines) + "\n")
    quality = quality_config(error_patterns=[r"^\s*error\b"], max_duplicate_share=0.0, min_samples=20)
    gate = Gate(dataset_config(), quality)
    gate.scan(path, upstream_errors=11)
    checks = gate.quality.checks(gate.upstream_share())
    assert checks["duplicate_share"] == {"value": round(1 / 11, 4), "max": 0.0, "passed": False}
    assert checks["near_duplicate_share"]["value"] == round(2 / 11, 4)  # dup and near
    assert checks["error_like_share"]["value"] == round(1 / 11, 4)
    assert checks["min_samples"]["passed"] is False
    assert checks["upstream_error_share"]["value"] == 0.5
    assert 0 < checks["distinct_2"]["value"] < 1


def test_split_is_seeded_disjoint_and_written_in_source_order(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("".join(chat(str(i), reply=f"r{i}") + "\n" for i in range(50)))
    valid = {path.as_posix(): list(range(1, 51))}
    train, held = choose_split(valid, 0.1, seed=1)
    assert len(held) == 5 and len(train) == 45 and train.isdisjoint(held)
    assert choose_split(valid, 0.1, seed=1) == (train, held)
    assert choose_split(valid, 0.1, seed=2) != (train, held)
    assert len(choose_split(valid, 0.1, seed=1, max_examples=10)[0]) == 10
    out_train, out_eval = io.BytesIO(), io.BytesIO()
    assert write_split([path], train, held, ("id", "messages"), out_train, out_eval) == (45, 5)
    ids = [json.loads(line)["id"] for line in out_train.getvalue().splitlines()]
    assert ids == sorted(ids, key=int)


TWO_TURNS = b'[{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}'


def mixed_rows() -> list[bytes]:
    """Good rows with duplicates and near-duplicates among them, and every kind of bad row."""
    good = [chat(f"g-{i}", reply=f"Reply {i % 40} about seeds, roots and rain.").encode() for i in range(300)]
    bad = [
        b"{not json",
        b"",
        b"   ",
        b"[1, 2]",
        b'{"id": "\xff"}',
        chat("crlf").encode() + b"\r",
        json.dumps({"messages": json.loads(chat("x"))["messages"]}).encode(),
        chat("e-1", reply="").encode(),
        chat("w-1", reply="   ").encode(),
        chat("t-1", reply="<think>never closed").encode(),
        chat("t-2", reply="<think>a</think> fine").encode(),
        chat(" ", reply="blank id").encode(),
        json.dumps({"id": 7, "messages": json.loads(chat("x"))["messages"]}).encode(),
        json.dumps(
            {"id": "o", "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]}
        ).encode(),
        json.dumps(
            {"id": "s", "messages": [{"role": "system", "content": "s"}, *json.loads(chat("x"))["messages"]]}
        ).encode(),
        json.dumps({"id": "big", "extra": 10**400, "messages": json.loads(chat("x"))["messages"]}).encode(),
        json.dumps({"id": "exp", "extra": 1.5, "messages": json.loads(chat("y"))["messages"]}).encode(),
        b'{"id": "inf", "extra": 1e400, "messages": ' + TWO_TURNS,
        b'{"id": "esc", "messages": [{"role": "user", "content": "u"}, '
        b'{"role": "assistant", "content": "\\u0045rror: x"}]}',
        b'{"id": "bad8", "note": "\xc3\x28", "messages": ' + TWO_TURNS,
        chat("err", reply="Error: 500 upstream").encode(),
        chat("x" * 300).encode(),
    ]
    rows = list(good)
    for i, line in enumerate(bad):
        rows.insert(7 + i * 13, line)
    return rows


def gate_result(gate: Gate) -> tuple[Any, ...]:
    return (
        [vars(e) for e in gate.errors],
        gate.valid,
        {name: vars(s) for name, s in gate.sources.items()},
        gate.quality.checks(gate.upstream_share()),
        gate.quality.length_stats(),
    )


def test_fast_path_and_detailed_checks_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shaping.data.validation as validation

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(mixed_rows()) + b'\n{"id": "cut", "messages": [')
    dataset = dataset_config(
        schema=[
            FieldRule(name="id", type="string", required=True, allow_empty=False, max_length=200),
            FieldRule(name="messages", type="array", required=True, allow_empty=False),
            FieldRule(name="messages[*].role", type="string", required=True, enum=["system", "user", "assistant"]),
            FieldRule(name="messages[*].content", type="string", required=True, allow_empty=False),
        ]
    )
    quality = quality_config(error_patterns=[r"^\s*error\b", "__ERROR__"], distinct_sample=50)
    monkeypatch.setattr(validation, "BLOCK_BYTES", 1024)  # many blocks, each refused one split in halves
    fast = Gate(dataset, quality)
    assert fast.fast is not None
    fast.scan(path)
    slow = Gate(dataset, quality)
    slow.fast = None  # every line through the detailed checks
    slow.scan(path)
    assert gate_result(fast) == gate_result(slow)
    lines = {e.line for e in fast.errors}
    assert len(fast.errors) >= 20 and 1 in lines  # the BOM
    assert fast.quality.duplicates > 0 and fast.quality.error_like == 2


def test_schema_beyond_the_fast_path_uses_the_detailed_checks() -> None:
    assert Gate(dataset_config(schema=[FieldRule(name="meta.source", type="string")]), quality_config()).fast is None
    assert Gate(dataset_config(format="preference"), quality_config()).fast is None
    rules = [FieldRule(name="score", type="number", min=0, max=1), FieldRule(name="tags", type="array", max_length=2)]
    assert Gate(dataset_config(schema=rules), quality_config()).fast is not None


def test_workers_split_a_file_and_merge_the_same_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shaping.data.validation as validation

    path = tmp_path / "mixed.jsonl"
    rows = mixed_rows()
    path.write_bytes(b"\n".join(rows + rows[:40]) + b"\n")  # duplicates across the two halves
    monkeypatch.setattr(validation, "MIN_SHARD_BYTES", 1000)
    monkeypatch.setattr(validation, "BLOCK_BYTES", 2048)
    quality = quality_config(error_patterns=[r"^\s*error\b"], distinct_sample=250)  # more than one part holds
    one = Gate(dataset_config(), quality)
    one.scan(path, upstream_errors=3)
    two = Gate(dataset_config(), quality, workers=2)
    assert len(validation._line_ranges(path, 2)) == 2
    two.scan(path, upstream_errors=3)
    assert gate_result(two) == gate_result(one)
    assert one.quality.duplicates >= 40
    three = Gate(dataset_config(), quality, workers=3)  # this process and two workers, merged in order
    assert len(validation._line_ranges(path, 3)) == 3
    three.scan(path, upstream_errors=3)
    assert gate_result(three) == gate_result(one)


def varied_rows(n: int) -> list[bytes]:
    """Valid chat rows of every shape the fast path decodes differently: (user, assistant) pairs,
    system prompts, several turns, unknown fields, escaped and raw non-ASCII, think tags, error replies."""
    import random

    rng = random.Random(7)
    replies = [
        "Error: upstream 500",
        "I'm sorry, I can't do that",
        "Ünïcödé reply ΣΑΣ",
        "plain reply",
        "Plain, REPLY!",
        "<think>weigh it</think> fine",
        "a longer reply " * 30,
    ]
    rows = []
    for i in range(n):
        reply = f"{rng.choice(replies)} {i % 40}"
        shape = rng.random()
        turns = [{"role": "user", "content": f"question {i % 9}"}, {"role": "assistant", "content": reply}]
        if shape < 0.2:
            turns.insert(0, {"role": "system", "content": "be brief"})
        elif shape < 0.35:
            turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, *turns]
        row: dict[str, Any] = {"id": f"v-{i}", "messages": turns}
        if rng.random() < 0.1:
            row["source"] = "hand"
        rows.append(json.dumps(row, ensure_ascii=rng.random() < 0.5).encode())
    return rows


def test_fast_path_agrees_on_varied_shapes_and_bad_utf8_in_a_read_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairs, system prompts, several turns and unknown fields in one file: each decoding the fast path
    picks gives the detailed checks' result. Bad UTF-8 in a field msgspec reads (`id`) is an error
    for that line, not a crash (msgspec raises UnicodeDecodeError there, not DecodeError)."""
    import shaping.data.validation as validation

    rows = varied_rows(600)
    mixed = mixed_rows()
    for j in range(len(mixed) - 300):  # the bad rows of mixed_rows, spread over the file
        rows.insert(j * 29, mixed[7 + j * 13])
    rows.insert(450, b'{"id": "\xff\xfe", "messages": ' + TWO_TURNS)
    rows.insert(500, b'{"id": "lone", "note": "\\ud800", "messages": ' + TWO_TURNS)  # a lone surrogate, skipped
    rows.insert(520, b'{"id": "lone2", "messages": [{"role": "user", "content": "\\udc00"}]}')
    path = tmp_path / "varied.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    monkeypatch.setattr(validation, "BLOCK_BYTES", 4096)
    quality = quality_config(error_patterns=[r"^\s*error\b", "__ERROR__", r"^i'm sorry"], distinct_sample=100)
    dataset = dataset_config(schema=[FieldRule(name="id", type="string", required=True, allow_empty=False)])
    fast = Gate(dataset, quality)
    assert fast.fast is not None and fast.fast.decodings[0].pairs
    fast.scan(path)
    slow = Gate(dataset, quality)
    slow.fast = None
    slow.scan(path)
    assert gate_result(fast) == gate_result(slow)
    assert any(e.field == "encoding" and e.line == 451 for e in fast.errors)
    assert fast.quality.error_like > 0 and 0 < fast.quality.near_duplicates < fast.quality.rows


def test_pairs_take_the_cheapest_decoding_and_other_shapes_switch_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(user, assistant) rows are decoded by the first decoding (strict pairs) in every block; once a
    block holds a system prompt, the part switches to the general one, with the same figures."""
    import shaping.data.validation as validation

    used: list[tuple[Any, bool]] = []
    decode = validation._decode_lines

    def spy(decoder: Any, block: bytes, count: int) -> Any:
        rows = decode(decoder, block, count)
        used.append((decoder, rows is not None))
        return rows

    monkeypatch.setattr(validation, "_decode_lines", spy)
    monkeypatch.setattr(validation, "BLOCK_BYTES", 2048)
    rows = [chat(f"p-{i}", reply=f"reply {i % 30}", prompt=f"q{i}").encode() for i in range(400)]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    dataset = dataset_config(schema=[FieldRule(name="id", type="string", required=True)])
    gate = Gate(dataset, quality_config())
    gate.scan(path)
    assert gate.fast is not None
    first, general = gate.fast.decodings[0].decoder, gate.fast.decodings[1].decoder
    assert len(used) > 20 and all(decoder is first and ok for decoder, ok in used)
    assert gate.valid_rows == 400 and not gate.errors
    assert gate.quality.duplicates == 0 and gate.quality.near_duplicates == 400 - 30
    system = {"id": "s", "messages": [{"role": "system", "content": "s"}, *json.loads(chat("x"))["messages"]]}
    path.write_bytes(b"\n".join([*rows[:200], json.dumps(system).encode(), *rows[200:]]) + b"\n")
    used.clear()
    again = Gate(dataset, quality_config())
    again.fast = gate.fast
    again.scan(path)
    assert used.count((first, False)) == 1  # the system prompt's block; pairs are not tried again after it
    assert used[-1] == (general, True)
    slow = Gate(dataset, quality_config())
    slow.fast = None
    slow.scan(path)
    assert gate_result(again) == gate_result(slow) and again.valid_rows == 401


def test_distinct_keys_count_and_merge_like_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys folded into sorted arrays in several compactions, and two parts merged, count what a set counts."""
    import random

    import shaping.data.quality as quality

    monkeypatch.setattr(quality, "_COMPACT_AT", 64)
    rng = random.Random(3)
    signed = [rng.randrange(-(2**63), 2**63) for _ in range(300)]
    signed += [*signed[:50], -1, 0, 2**63 - 1, -(2**63), 0]
    unsigned = [k % 2**64 for k in signed]
    for keys, typecode in ((signed, "q"), (unsigned, "Q")):
        first, second = quality.DistinctKeys(typecode), quality.DistinctKeys(typecode)
        for i in range(0, 200, 7):
            first.extend(keys[i : min(i + 7, 200)])
        second.extend(keys[200:])
        assert len(second) == len(set(keys[200:]))
        first.update(second)
        first.extend(keys[:10])  # pending keys after a merge still count
        assert len(first) == len(set(keys))


def test_near_keys_match_one_at_a_time_and_lengths_give_statistics_median() -> None:
    from shaping.data.quality import Quality, near_key, near_keys

    ascii_replies = ["Hello, World!", "hello world", "HELLO\tWORLD.", "other"]
    mixed = [*ascii_replies, "Ünïcödé, ΣΑΣ!", "ünïcödé σας"]
    for replies in (ascii_replies, mixed):
        assert list(near_keys(replies, [r.encode() for r in replies])) == [near_key(r) for r in replies]
    assert len({near_key(r) for r in mixed}) == 3
    import random
    import statistics

    rng = random.Random(2)
    for lengths in ([3, 1, 2], [4, 1, 3, 2], [5], [rng.randrange(1, 900) for _ in range(1001)]):
        q = Quality(quality_config())
        q.add_many(list(range(len(lengths))), ["x" * k for k in lengths], [b"x" * k for k in lengths])
        assert q.checks(0.0)["median_reply_chars"]["value"] == statistics.median(lengths)
        ordered, n = sorted(lengths), len(lengths)
        stats = q.length_stats()
        assert stats["mean"] == round(sum(lengths) / n, 1) and stats["max"] == max(lengths)
        assert [stats[k] for k in ("p5", "p50", "p95")] == [ordered[min(n - 1, int(p * n))] for p in (0.05, 0.5, 0.95)]


def test_distinct_n_matches_sets_of_words() -> None:
    """Distinct-1/2 from words as bytes give what str words give, for ASCII replies (split as bytes),
    non-ASCII ones, empty ones and the separators str.split() splits at and bytes.split() does not."""
    import itertools
    import random
    import string

    from shaping.data.quality import Quality

    rng = random.Random(5)
    alphabet = ["seed", "Seed", "root,", "ROOT", "ünï", "ΣΑΣ", " ", "\t", "\x1c", "\xa0", "\u2003", "!!", "a.b", "\n"]
    sample = ["", "   ", "...", "one"]
    sample += ["".join(rng.choices(alphabet, k=rng.randrange(0, 12))) for _ in range(300)]
    q = Quality(quality_config(distinct_sample=len(sample)))
    q.sample.extend(sample)
    unigrams: set[str] = set()
    bigrams: set[tuple[str, str]] = set()
    unigram_total = bigram_total = 0
    for reply in sample:
        words = reply.lower().translate(str.maketrans("", "", string.punctuation)).split()
        unigrams.update(words)
        bigrams.update(itertools.pairwise(words))
        unigram_total += len(words)
        bigram_total += max(0, len(words) - 1)
    assert q._ngrams() == (len(unigrams), unigram_total, len(bigrams), bigram_total)
    assert len(bigrams) > 50


def test_error_patterns_anchored_share_one_regex_and_count_the_same() -> None:
    """Patterns anchored with ^ are tried together at the start; each reply is counted once, as with one
    search per pattern. Anything the ^ might not anchor keeps its own regex; a bad regex names its key."""
    import re

    from shaping.data.quality import Quality, _anchored_body

    assert _anchored_body(r"^\s*(error|exception)\b") == r"\s*(error|exception)\b"
    assert _anchored_body(r"^[]|(]x") == r"[]|(]x"  # | and ( inside a class
    for pattern in (r"^a|b", r"^[\](]|b", r"^(?i)x", r"^(a)\1", r"^(?=a)", "a^", r"^a\|b|c"):
        assert _anchored_body(pattern) is None, pattern
    patterns = [r"^\s*(error|exception|traceback)\b", "__ERROR__", r"^\s*i'?m sorry", r"^[\](]|sorry", r"^\d+$"]
    replies = [
        "Error: x",
        "  exception",
        "I'm sorry",
        "im SORRY but",
        "ok __error__",
        "(paren",
        "]bracket",
        "fine, sorry",
        "12345",
        "123a",
        "errors",
        "",
        "x" * 400 + "__ERROR__",
    ]
    q = Quality(quality_config(error_patterns=patterns))
    assert len(q._error_like) == 3  # the three anchored ones share a regex
    q.add_many(list(range(len(replies))), replies, [r.encode() for r in replies])
    one_each = [re.compile(p, re.IGNORECASE) for p in patterns]
    expected = sum(any(r.search(reply, 0, 300) for r in one_each) for reply in replies)
    assert q.error_like == expected == 9
    with pytest.raises(ShapingError, match=r"validation\.quality\.error_patterns\[1\]='\(unclosed'"):
        Quality(quality_config(error_patterns=["ok", "(unclosed"]))


# tool-call trajectories (OpenAI shape) under conf/'s schema -----------------------------------------------------
def call(cid: str, name: str = "add", arguments: str = '{"a": 1, "b": 2}') -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


ADD_TOOL = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def trajectory(*middle: dict[str, Any], reply: str = "It is 3.", **row: Any) -> str:
    """A row asking 1+2 whose assistant turn is `middle` (calls and tool results), then `reply`."""
    user = {"role": "user", "content": "What is 1+2?"}
    return json.dumps({"id": "t", **row, "messages": [user, *middle, {"role": "assistant", "content": reply}]})


def test_tool_call_trajectories_pass_the_gate_and_bad_ones_name_line_and_key(tmp_path: Path) -> None:
    called = {"role": "assistant", "content": None, "tool_calls": [call("c1")]}
    answer = {"role": "tool", "content": "3", "tool_call_id": "c1"}
    reply = {"role": "assistant", "content": "a"}
    lines = [
        chat("plain"),
        trajectory(called, answer, tools=ADD_TOOL),  # 2: one call, the tools offered
        trajectory(  # 3: two calls at once ("" beside them), answered in any order, then a second round
            {"role": "assistant", "content": "", "tool_calls": [call("c1"), call("c2", arguments="{}")]},
            {"role": "tool", "content": "3", "tool_call_id": "c2"},
            {**answer, "name": "add"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [call("c3")]},
            {"role": "tool", "content": "3", "tool_call_id": "c3"},
        ),
        trajectory(answer),  # 4: a tool message answering nothing
        trajectory(called, {**answer, "tool_call_id": "zz"}),  # 5
        trajectory({**called, "tool_calls": [call("c1", arguments='{"a": 1,')]}, answer),  # 6
        trajectory(called),  # 7: the call never answered
        trajectory({**called, "tool_calls": [call("c1", name="mul")]}, answer, tools=ADD_TOOL),  # 8
        trajectory(called, {"role": "tool", "content": "3"}),  # 9: no tool_call_id
        json.dumps({"id": "t", "messages": [{"role": "user", "content": "hi"}, called, answer]}),  # 10: ends on a tool
        json.dumps({"id": "t", "messages": [{"role": "user", "content": None}, reply]}),  # 11
        trajectory({**called, "tool_calls": [call("c1", arguments="[1, 2]")]}, answer),  # 12
        json.dumps({"id": "n", "messages": [{"role": "user", "content": "u"}, {**reply, "tool_calls": None}]}),  # 13
        json.dumps({**json.loads(chat("x")), "tools": "add"}),  # 14: tools not a list
    ]
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dataset = _conf_sections()[0]  # the shipped schema, as the validate stage reads it
    fast = Gate(dataset, quality_config())
    assert fast.fast is not None  # plain rows keep the fast path
    fast.scan(path)
    slow = Gate(dataset, quality_config())
    slow.fast = None
    slow.scan(path)
    assert gate_result(fast) == gate_result(slow)
    first: dict[int, tuple[str, str]] = {}
    for e in fast.errors:
        first.setdefault(e.line, (e.field, e.message))
    assert sorted(first) == [4, 5, 6, 7, 8, 9, 10, 11, 12, 14]
    assert first[4] == ("messages[1]", "a tool message must answer an assistant message's tool_calls")
    assert first[5] == ("messages[2].tool_call_id", "'zz' answers no call of messages[1]")
    assert first[6][0] == "messages[1].tool_calls[0].function.arguments" and "not valid JSON" in first[6][1]
    assert first[7][0] == "messages[1].tool_calls[0].id" and "'c1' has no tool message answering it" in first[7][1]
    assert first[8] == ("messages[1].tool_calls[0].function.name", "'mul' is not among the row's tools")
    assert first[9][0] == "messages[2].tool_call_id" and first[9][1].startswith("missing")
    assert first[10] == ("messages", "the last message must be the assistant's")
    assert first[11][0] == "messages[0].content" and first[11][1].startswith("missing")
    assert first[12] == ("messages[1].tool_calls[0].function.arguments", "expected a JSON object, got a JSON list")
    assert first[14][0] == "tools"
    assert list(fast.valid[path.as_posix()]) == [1, 2, 3, 13]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "u", "tool_calls": [call("c1")]}], "messages[0].tool_calls: only an assistant"),
        ([{"role": "assistant", "content": None, "tool_calls": []}], "messages[0].tool_calls: expected a non-empty"),
        (
            [{"role": "assistant", "content": None, "tool_calls": [call("c1"), call("c1")]}],
            "messages[0].tool_calls[1].id: 'c1' is the id of an earlier call",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": [{**call("c1"), "type": "code"}]}],
            "messages[0].tool_calls[0].type: 'code'; only function calls",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f"}}]}],
            "messages[0].tool_calls[0].function.arguments: missing",
        ),
        (
            [{"role": "assistant", "content": 3, "tool_calls": [call("c1")]}],
            "messages[0].content: expected a string or null beside tool_calls",
        ),
        ([{"role": "user", "content": "u", "tool_call_id": "c1"}], "messages[0].tool_call_id: only a tool message"),
    ],
)
def test_malformed_tool_calls_are_named(messages: list[dict[str, Any]], problem: str) -> None:
    assert any(p.startswith(problem) for p in validate_messages(messages)), validate_messages(messages)
