"""`python -m shaping.sample`: random records for review, any file size, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shaping.sample import main, reservoir


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(i: int) -> dict[str, object]:
    reply = f"reply {i} " + "word " * 60
    return {
        "id": f"s{i}",
        "messages": [{"role": "user", "content": f"prompt {i}"}, {"role": "assistant", "content": reply}],
    }


def test_reservoir_is_seeded_uniformish_and_in_file_order(tmp_path: Path) -> None:
    file = write(tmp_path / "s.jsonl", [chat(i) for i in range(1000)])
    first = reservoir(str(file), 10, seed=1)
    assert first == reservoir(str(file), 10, seed=1) and first != reservoir(str(file), 10, seed=2)
    lines = [lineno for lineno, _ in first]
    assert lines == sorted(lines) and len(set(lines)) == 10 and max(lines) > 500  # not just the head
    assert len(reservoir(str(file), 5000, seed=0)) == 1000


def test_output_truncated_or_full(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(
        tmp_path / "s.jsonl", [chat(i) for i in range(3)] + [{"__ERROR__": {"error": "parse_error", "message": "bad"}}]
    )
    assert main([str(file), "-n", "4"]) == 0
    short = capsys.readouterr().out
    assert short.count("=== line") == 4 and "PROMPT: prompt 0" in short and "…" in short
    assert "__ERROR__ parse_error" in short
    assert main([str(file), "-n", "1", "--full", "--seed", "3"]) == 0
    assert "…" not in capsys.readouterr().out


def test_bad_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat(0)) + "\n{not json\n")
    done = subprocess.run([sys.executable, "-m", "shaping.sample", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and f"{bad}:2: malformed JSON" in done.stderr and "Traceback" not in done.stderr
