"""Contracts for context-distilled identity data. Add your own: every test here gates training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

IDENTITY = Path("data/identity/identity.md")


def replies(rows: list[dict[str, Any]]) -> list[str]:
    return [
        m["content"]
        for row in rows
        for m in row.get("messages", [])
        if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str)
    ]


def test_no_sample_carries_the_system_prompt(dataset_rows: list[dict[str, Any]]) -> None:
    # the student must learn the identity without being told it: no system message in the data
    leaked = [
        row.get("id")
        for row in dataset_rows
        if any(isinstance(m, dict) and m.get("role") == "system" for m in row.get("messages", []))
    ]
    assert not leaked, f"samples with a system message: {leaked[:10]}"


def test_replies_do_not_copy_the_identity_document(dataset_rows: list[dict[str, Any]]) -> None:
    words = IDENTITY.read_text(encoding="utf-8").split()
    spans = {" ".join(words[i : i + 12]) for i in range(len(words) - 11)}
    copied = [text[:80] for text in replies(dataset_rows) if any(span in text for span in spans)]
    assert not copied, f"replies quoting 12+ words of {IDENTITY} verbatim: {copied[:5]}"
