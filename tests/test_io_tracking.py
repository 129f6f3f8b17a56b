from __future__ import annotations

import json
from pathlib import Path

import pytest

from shaping.errors import ShapingError
from shaping.io import atomic_dir, read_jsonl, write_jsonl
from shaping.tracking import RunRecord, hash_inputs, sha256_file


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "héllo"}, {"id": "b"}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    assert read_jsonl(tmp_path / "x.jsonl") == rows


def test_malformed_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n{"id": 2,\n')
    with pytest.raises(ShapingError, match=r"bad.jsonl:2: malformed JSON"):
        read_jsonl(path)


def test_atomic_dir_keeps_old_output_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("crash")
    assert (target / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_run_record(tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("abc")
    record = RunRecord(stage="s", params_fingerprint="f", params_sections=["lora"])
    record.add_inputs([data])
    record.finish(tmp_path / "run.json", "success")
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["inputs"] == {data.as_posix(): sha256_file(data)}
    assert saved["exit_status"] == "success" and saved["duration_s"] >= 0
    assert saved["versions"]["torch"] and saved["versions"]["trl"]
    assert set(saved) >= {"git_commit", "params_fingerprint", "started_at", "ended_at", "backend"}


def test_hash_inputs_walks_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.txt").write_text("1")
    (tmp_path / "a" / "2.txt").write_text("2")
    assert len(hash_inputs([tmp_path / "a"])) == 2
