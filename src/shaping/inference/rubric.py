"""Asking a model to score a reply against a rubric, and reading its XML-tagged answer.

`rubric_messages` builds the judge's request (the rubric's instructions, criteria and scale, the
conversation, the reply and optionally a reference reply); `parse_assessment` reads its answer and
`normalized_score` turns it into one number in [0, 1]. The evaluation's `judge` metric, GEPA's `judge`
metric and train=grpo's `judge` reward all use them, so the three ask and read the same way.

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

from shaping.config.schema import RubricConfig
from shaping.errors import ShapingError

_TAG_NAME = re.compile(r"^[A-Za-z_][\w-]*$")

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


def normalized_score(assessment: Assessment, low: float, high: float) -> float | None:
    """The mean of the criteria the judge scored, mapped from [low, high] to [0, 1]; None when it scored none."""
    scores = [s for s in assessment.scores.values() if s is not None]
    if not scores:
        return None
    return (sum(scores) / len(scores) - low) / (high - low)


def check_rubric(rubric: RubricConfig, where: str = "eval.judge.rubric") -> tuple[float, float]:
    """The scale's (low, high); a rubric the judge cannot be asked about raises ShapingError naming `where`."""
    if not rubric.criteria:
        raise ShapingError(f"{where}.criteria: empty; name at least one criterion, e.g. [{{name: voice}}]")
    for i, criterion in enumerate(rubric.criteria):
        if not _TAG_NAME.match(criterion.name):
            raise ShapingError(
                f"{where}.criteria[{i}].name={criterion.name!r}: must be usable as an XML tag "
                "(letters, digits, _ or -, not starting with a digit)"
            )
    names = [c.name.lower() for c in rubric.criteria]
    if len(set(names)) != len(names):
        raise ShapingError(f"{where}.criteria: names repeat ({', '.join(names)}); each criterion once")
    if len(rubric.scale) != 2 or not rubric.scale[0] < rubric.scale[1]:
        raise ShapingError(f"{where}.scale={list(rubric.scale)}: must be [lowest, highest], e.g. [1, 5]")
    return float(rubric.scale[0]), float(rubric.scale[1])


def rubric_messages(
    rubric: RubricConfig, prompt: list[dict[str, str]], reply: str, reference: str | None = None
) -> list[dict[str, str]]:
    """The judge's request: a system message with the rubric and the answer's XML form, and a user message
    with the conversation so far (`prompt`, less its system message), the reply and, if given, a reference."""
    low, high = rubric.scale
    criteria = "\n".join(f"- {c.name}: {c.description}" if c.description else f"- {c.name}" for c in rubric.criteria)
    example = "\n".join(
        f'  <criterion name="{c.name}"><score>N</score><reason>one sentence</reason></criterion>'
        for c in rubric.criteria
    )
    system = (
        f"{rubric.instructions.strip()}\n\n"
        f"Score the assistant's reply on each criterion from {low:g} (worst) to {high:g} (best):\n{criteria}\n\n"
        f"Answer only with this XML, N a number from {low:g} to {high:g}:\n<assessment>\n{example}\n</assessment>"
    ).strip()
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in prompt if m["role"] != "system")
    user = f"<conversation>\n{conversation}\n</conversation>\n\n<reply>\n{reply}\n</reply>"
    if reference is not None:
        user += f"\n\n<reference>\n{reference}\n</reference>\n(The reference is a good reply, for comparison.)"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
