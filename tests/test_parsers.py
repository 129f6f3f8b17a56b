"""shaping.inference.rubric's parsers on judge replies, well-formed and not."""

from __future__ import annotations

import pytest

from shaping.inference.rubric import extract_all, extract_tag, parse_assessment, parse_score, parse_xml_fields

REPLY = """Sure! Here is my assessment.
<assessment>
  <criterion name="voice"><score>4</score><reason>sounds like Juniper & her mill</reason></criterion>
  <criterion name='accuracy'>
    <score> 2/5 </score>
  </criterion>
</assessment>
Hope this helps."""


def test_tags_are_read_tolerantly() -> None:
    assert extract_tag("x <Answer id=1>\n 42 \n</answer> y", "answer") == "42"
    assert extract_tag("no tags here", "answer") is None
    assert extract_all("<q>a</q> <q>b < c</q>", "q") == ["a", "b < c"]
    assert parse_xml_fields("<a>1</a>", ["a", "b"]) == {"a": "1", "b": None}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("4", 4.0), (" 4.5 ", 4.5), ("3/5", 3.0), ("0", None), ("6", None), ("four", None), (None, None)],
)
def test_scores_within_the_scale(raw: str | None, expected: float | None) -> None:
    assert parse_score(raw, 1, 5) == expected


def test_assessment_with_criterion_blocks() -> None:
    result = parse_assessment(REPLY, ["voice", "accuracy"])
    assert result.scores == {"voice": 4.0, "accuracy": 2.0}
    assert result.reasons["voice"] == "sounds like Juniper & her mill" and result.reasons["accuracy"] is None
    assert result.complete and result.problems == []


def test_assessment_with_plain_tags_and_problems() -> None:
    result = parse_assessment("<voice>5</voice> <accuracy>excellent</accuracy>", ["voice", "accuracy", "safety"])
    assert result.scores == {"voice": 5.0, "accuracy": None, "safety": None}
    assert not result.complete
    assert result.problems == [
        "accuracy: 'excellent' is not a number from 1 to 5",
        'safety: no <criterion name="safety"> or <safety> tag',
    ]


def test_unparseable_reply_is_reported_not_raised() -> None:
    result = parse_assessment("I refuse to grade this.", ["voice"])
    assert result.scores == {"voice": None} and len(result.problems) == 1
