"""`adherence`: how often base, teacher and tuned replies state the identity's facts.

The facts file (eval.adherence.facts_file, `data/identity/facts.yaml` by default) names each fact
with the words or phrases that state it. A reply states a fact when it contains one of them as whole
words, case-insensitively ("seed" does not match "seedling" unless listed). A reply adheres when it
states at least eval.adherence.min_facts facts. Each model's figure is the share of its greedy replies
to the held-out prompts (eval.samples) that adhere, with a seeded bootstrap interval, and the mean
number of facts per reply; every reply and the facts it stated go to details/adherence.jsonl.
Base is the floor (no identity), teacher the target (the identity in its system prompt).
`tuned_minus_base` is the difference of the two shares with its paired bootstrap interval (the
prompts resampled, each with both its replies): two intervals of a few dozen replies each can
overlap while their difference is clearly above 0, and this says whether it is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from shaping.errors import ShapingError
from shaping.evaluation.registry import EvalContext, metric
from shaping.evaluation.stats import mean_with_ci
from shaping.io import write_jsonl

MODELS = ("base", "teacher", "tuned")


def load_facts(path: str | Path) -> dict[str, re.Pattern[str]]:
    """{fact name: one case-insensitive whole-word pattern for its phrases}; a bad file is one error naming it."""
    file = Path(path)
    if not file.is_file():
        raise ShapingError(f"eval.adherence.facts_file: {file} not found; list the identity's facts there")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ShapingError(f"{file}: not valid YAML ({err})") from None
    facts = data.get("facts") if isinstance(data, dict) else None
    if not isinstance(facts, dict) or not facts:
        raise ShapingError(f"{file}: needs a `facts:` mapping of fact name -> list of words or phrases")
    patterns = {}
    for name, phrases in facts.items():
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise ShapingError(f"{file}: facts.{name} must be a non-empty list of words or phrases")
        alternatives = "|".join(re.escape(p.strip()) for p in sorted(phrases, key=len, reverse=True))
        patterns[str(name)] = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)
    return patterns


def stated(text: str, facts: dict[str, re.Pattern[str]]) -> list[str]:
    """The names of the facts `text` states."""
    return [name for name, pattern in facts.items() if pattern.search(text)]


@metric("adherence")
def adherence(ctx: EvalContext) -> dict[str, Any]:
    cfg = ctx.cfg.eval.adherence
    facts = load_facts(cfg.facts_file)
    models = [m for m in MODELS if m != "teacher" or ctx.system_prompt]
    pairs = zip(ctx.rows, ctx.prompts, strict=False)
    records: list[dict[str, Any]] = [{"id": str(row["id"]), "prompt": prompt[-1]["content"]} for row, prompt in pairs]
    out: dict[str, Any] = {}
    shares: dict[str, list[float]] = {}
    for name in models:
        texts = [r["text"] or "" for r in ctx.replies(name)]
        found = [stated(text, facts) for text in texts]
        adheres = shares[name] = [float(len(f) >= cfg.min_facts) for f in found]
        for record, text, names in zip(records, texts, found, strict=True):
            record[name] = text
            record[f"{name}_facts"] = names
        out[name] = {
            **mean_with_ci(adheres, cfg.confidence, cfg.bootstrap_samples, ctx.cfg.seed),
            "facts_per_reply": round(sum(map(len, found)) / len(found), 4) if found else 0.0,
        }
    if "base" in shares and "tuned" in shares:
        differences = [t - b for t, b in zip(shares["tuned"], shares["base"], strict=True)]  # per prompt
        out["tuned_minus_base"] = mean_with_ci(differences, cfg.confidence, cfg.bootstrap_samples, ctx.cfg.seed)
    write_jsonl(ctx.details_dir / "adherence.jsonl", records)
    return {"adherence": {**out, "facts": len(facts), "min_facts": cfg.min_facts}}
