"""Seed 002's claim-extraction evaluation on SciFact-format files.

Claims JSONL, one claim a line (SciFact's `claims_*.jsonl`):

    {"id": 1, "claim": "...", "evidence": {"101": [{"sentences": [1], "label": "SUPPORT"}]}, "cited_doc_ids": [101]}

Corpus JSONL, one abstract a line (SciFact's `corpus.jsonl`):

    {"doc_id": 101, "title": "...", "abstract": ["sentence 0", "sentence 1", ...]}

The model is shown the claim (the hypothesis) and its cited abstracts and asked for lines

    CLAIM[c1]: <the hypothesis, word for word>
    CLAIM[c2]: <an evidence sentence>
    RELATION: c2 supports c1        (or: refutes)

Scores: CLAIM[c1] exact match (whitespace-normalised) against the claim; each gold evidence
sentence matched by a predicted claim other than c1, by string (whitespace-normalised equality)
and by embedding similarity (cosine >= threshold); the label the RELATION lines give c1
(any refutes: CONTRADICT, else any supports: SUPPORT, else NEI) against the gold label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shaping.errors import ShapingError
from shaping.inference.embeddings import similarity
from shaping.io import iter_jsonl

_CLAIM = re.compile(r"^\s*CLAIM\[(c\d+)\]\s*:?\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_RELATION = re.compile(
    r"^\s*RELATION\s*:?\s*(c\d+)\s+(supports|refutes|contradicts)\s+(c\d+)\b", re.IGNORECASE | re.MULTILINE
)
LABELS = ("SUPPORT", "CONTRADICT", "NEI")


@dataclass
class ClaimSample:
    """One SciFact claim with its gold evidence sentences and label, and the prompt's documents."""

    id: str
    claim: str
    evidence: list[str]  # the gold evidence sentences, in corpus order
    label: str  # SUPPORT | CONTRADICT | NEI (no evidence)
    documents: list[dict[str, Any]]  # the cited abstracts: {doc_id, title, abstract}


def _normalize(text: str) -> str:
    return " ".join(text.split())


def load_corpus(path: str) -> dict[str, dict[str, Any]]:
    corpus: dict[str, dict[str, Any]] = {}
    for lineno, row in iter_jsonl(path):
        abstract = row.get("abstract")
        if "doc_id" not in row or not isinstance(abstract, list) or not all(isinstance(s, str) for s in abstract):
            raise ShapingError(f"{path}:{lineno}: a corpus row needs doc_id and abstract (a list of sentences)")
        corpus[str(row["doc_id"])] = {
            "doc_id": str(row["doc_id"]),
            "title": str(row.get("title", "")),
            "abstract": abstract,
        }
    return corpus


def load_claims(claims_path: str, corpus_path: str, limit: int | None = None) -> list[ClaimSample]:
    """The first `limit` claims with their evidence sentences looked up in the corpus."""
    corpus = load_corpus(corpus_path)
    samples: list[ClaimSample] = []
    for lineno, row in iter_jsonl(claims_path):
        if limit is not None and len(samples) >= limit:
            break
        where = f"{claims_path}:{lineno}"
        if "id" not in row or not isinstance(row.get("claim"), str):
            raise ShapingError(f"{where}: a claim row needs id and claim (a string)")
        evidence_by_doc = row.get("evidence") or {}
        cited = [str(d) for d in row.get("cited_doc_ids") or evidence_by_doc]
        if not isinstance(evidence_by_doc, dict):
            raise ShapingError(f"{where}: evidence must be an object {{doc_id: [{{sentences, label}}]}}")
        sentences: list[str] = []
        labels: set[str] = set()
        for doc_id, sets in evidence_by_doc.items():
            doc = corpus.get(str(doc_id))
            if doc is None:
                raise ShapingError(f"{where}: evidence names doc_id {doc_id}, which {corpus_path} lacks")
            for evidence in sets:
                labels.add(str(evidence.get("label", "")).upper())
                for index in evidence.get("sentences", []):
                    if not 0 <= index < len(doc["abstract"]):
                        raise ShapingError(f"{where}: doc_id {doc_id} has no sentence {index}")
                    if doc["abstract"][index] not in sentences:
                        sentences.append(doc["abstract"][index])
        unknown = labels - set(LABELS)
        if unknown or len(labels) > 1:
            raise ShapingError(f"{where}: evidence labels {sorted(labels)}; one of SUPPORT or CONTRADICT per claim")
        missing = [d for d in cited if d not in corpus]
        if missing:
            raise ShapingError(f"{where}: cited_doc_ids {missing} not in {corpus_path}")
        samples.append(
            ClaimSample(
                id=str(row["id"]),
                claim=row["claim"],
                evidence=sentences,
                label=labels.pop() if labels else "NEI",
                documents=[corpus[d] for d in cited],
            )
        )
    return samples


def claims_prompt(template: str, sample: ClaimSample) -> str:
    documents = "\n\n".join(f"[{d['doc_id']}] {d['title']}\n{' '.join(d['abstract'])}" for d in sample.documents)
    try:
        return template.format(claim=sample.claim, documents=documents)
    except (KeyError, IndexError, ValueError) as err:
        raise ShapingError(
            f"eval.claims.prompt: {err!r} is not a placeholder it knows; use {{claim}} and {{documents}}, "
            "and double other braces ({{ }})"
        ) from None


def parse_completion(text: str) -> dict[str, Any]:
    """{claims: {c1: text, ...} (first line per id), relations: [[source, verb, target], ...], label}."""
    claims: dict[str, str] = {}
    for found in _CLAIM.finditer(text):
        claims.setdefault(found.group(1).lower(), found.group(2))
    relations = [[m.group(1).lower(), m.group(2).lower(), m.group(3).lower()] for m in _RELATION.finditer(text)]
    verbs = {verb for _, verb, target in relations if target == "c1"}
    label = "CONTRADICT" if verbs & {"refutes", "contradicts"} else "SUPPORT" if "supports" in verbs else "NEI"
    return {"claims": claims, "relations": relations, "label": label}


def score_claims(
    samples: list[ClaimSample], completions: list[str], embedding_model: str, threshold: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(figures, one prediction record per sample). Evidence averages are over the samples that
    have gold evidence (NEI claims have none)."""
    records = []
    for sample, completion in zip(samples, completions, strict=True):
        parsed = parse_completion(completion)
        c1 = parsed["claims"].get("c1")
        predicted = [text for cid, text in parsed["claims"].items() if cid != "c1" and text]
        gold = [_normalize(s) for s in sample.evidence]
        by_string = [g in {_normalize(p) for p in predicted} for g in gold]
        cosines = similarity(embedding_model, sample.evidence, predicted)  # (gold, predicted)
        by_embedding = [bool(predicted) and float(row.max()) >= threshold for row in cosines]
        records.append(
            {
                "claim_id": sample.id,
                "completion": completion,
                "c1": c1,
                "c1_exact_match": c1 is not None and _normalize(c1) == _normalize(sample.claim),
                "evidence_claims": predicted,
                "evidence_string_match": sum(by_string) / len(gold) if gold else None,
                "evidence_embedding_match": sum(by_embedding) / len(gold) if gold else None,
                "relations": parsed["relations"],
                "label": parsed["label"],
                "gold_label": sample.label,
            }
        )
    total = len(records)
    with_evidence = [r for r in records if r["evidence_string_match"] is not None]
    exact = sum(r["c1_exact_match"] for r in records)

    def average(key: str) -> float:
        return round(sum(r[key] for r in with_evidence) / len(with_evidence), 4) if with_evidence else 0.0

    figures: dict[str, Any] = {
        "total": total,
        "c1_exact_match": exact,
        "c1_exact_match_rate": round(exact / total, 4) if total else 0.0,
        "no_c1": sum(r["c1"] is None for r in records),
        "with_evidence": len(with_evidence),
        "evidence_string_match_avg": average("evidence_string_match"),
        "evidence_embedding_match_avg": average("evidence_embedding_match"),
        "relations": sum(len(r["relations"]) for r in records),
        "relation_accuracy": round(sum(r["label"] == r["gold_label"] for r in records) / total, 4) if total else 0.0,
    }
    for label in LABELS:
        figures[f"predicted_{label.lower()}"] = sum(r["label"] == label for r in records)
    return figures, records
