"""Parsing structured (XML-tagged) replies of judge models.

Judges are asked to answer in tags, e.g.

    <assessment>
      <criterion name="voice"><score>4</score><reason>sounds like Juniper</reason></criterion>
      <criterion name="accuracy"><score>2</score></criterion>
    </assessment>

or simply `<voice>4</voice><accuracy>2</accuracy>`. Model output is rarely well-formed XML
(stray text, unescaped `&` and `<`, missing closing tags around the whole), so these parsers
use tolerant regular expressions over tags instead of an XML parser, and report what they
could not read instead of raising: an unparseable reply is counted, never silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*\d+(?:\.\d+)?)?\s*$")


def _tag_pattern(tag: str) -> re.Pattern[str]:
    name = re.escape(tag)
    return re.compile(rf"<\s*{name}(?:\s[^>]*)?>(.*?)<\s*/\s*{name}\s*>", re.IGNORECASE | re.DOTALL)


def extract_all(text: str, tag: str) -> list[str]:
    """The stripped contents of every `<tag>...</tag>` (attributes allowed, case-insensitive)."""
    return [m.group(1).strip() for m in _tag_pattern(tag).finditer(text)]


def extract_tag(text: str, tag: str) -> str | None:
    """The stripped content of the first `<tag>...</tag>`, or None."""
    found = _tag_pattern(tag).search(text)
    return found.group(1).strip() if found else None


def parse_xml_fields(text: str, fields: list[str]) -> dict[str, str | None]:
    """Each field's first tag content (None where the tag is missing)."""
    return {name: extract_tag(text, name) for name in fields}


def parse_score(text: str | None, low: float = 1, high: float = 5) -> float | None:
    """A number ("4", "4.5", "4/5") within [low, high], else None."""
    if text is None:
        return None
    found = _NUMBER.match(text)
    if not found:
        return None
    value = float(found.group(1))
    return value if low <= value <= high else None


@dataclass
class Assessment:
    """A judge's reply read against a rubric: a score (or None) per criterion."""

    scores: dict[str, float | None]
    reasons: dict[str, str | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what could not be read, one line each

    @property
    def complete(self) -> bool:
        return all(score is not None for score in self.scores.values())


def parse_assessment(text: str, criteria: list[str], low: float = 1, high: float = 5) -> Assessment:
    """Read one score per criterion from `<criterion name="c"><score>N</score>...` blocks, or
    from `<c>N</c>` / `<c><score>N</score></c>`. Missing or out-of-scale scores are None and
    named in `problems`."""
    blocks: dict[str, str] = {}
    for found in re.finditer(
        r"<\s*criterion\s+name\s*=\s*[\"']?([^\"'>\s]+)[\"']?\s*>(.*?)<\s*/\s*criterion\s*>",
        text,
        re.IGNORECASE | re.DOTALL,
    ):
        blocks.setdefault(found.group(1).strip().lower(), found.group(2))
    scores: dict[str, float | None] = {}
    reasons: dict[str, str | None] = {}
    problems: list[str] = []
    for criterion in criteria:
        block = blocks.get(criterion.lower())
        if block is None:
            block = extract_tag(text, criterion)
        if block is None:
            scores[criterion], reasons[criterion] = None, None
            problems.append(f'{criterion}: no <criterion name="{criterion}"> or <{criterion}> tag')
            continue
        raw = extract_tag(block, "score")
        raw = block if raw is None else raw
        scores[criterion] = parse_score(raw, low, high)
        reasons[criterion] = extract_tag(block, "reason")
        if scores[criterion] is None:
            problems.append(f"{criterion}: {raw.strip()[:40]!r} is not a number from {low:g} to {high:g}")
    return Assessment(scores=scores, reasons=reasons, problems=problems)
