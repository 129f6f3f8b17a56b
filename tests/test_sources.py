"""dataset.sources as URIs: hf:// datasets (local folders here; offline) converted to chat rows and gated."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest

from shaping.data import validate_messages
from shaping.data.sources import convert, materialize, parse_source, parse_sources, rename
from shaping.data.transforms import to_trajectories
from shaping.errors import ShapingError
from shaping.tracking.metadata import sha256_file

from .test_stage_errors import assert_clear_failure, run_script, write_params

__all__ = ["run_script"]  # the fixture, used by name

WHERE = "dataset.sources[0]"


def alpaca_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"instruction": f"Question {i}: what is {i} plus {i}?", "input": "", "output": f"It is {2 * i}, reply {i}."}
        for i in range(n)
    ]


def parquet_folder(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data.parquet"))
    return folder


def rows_of(uri: str, columns: dict[str, str] | None = None, target: str = "chat") -> list[dict[str, Any]]:
    out = io.BytesIO()
    loaded = materialize(parse_source(uri, WHERE), WHERE, columns or {}, out, target)
    assert loaded.rows == len(out.getvalue().splitlines())
    return [json.loads(line) for line in out.getvalue().splitlines()]


# converters --------------------------------------------------------------------------------------------------
def test_alpaca_rows_become_conversations() -> None:
    row = {"instruction": "Sum", "input": "2 and 3", "output": "5", "system": "Be brief.", "id": 7}
    assert convert(row, "alpaca", "x-0") == {
        "id": "7",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Sum\n\n2 and 3"},
            {"role": "assistant", "content": "5"},
        ],
    }
    assert convert({"instruction": "Hi", "output": "Yo"}, "alpaca", "x-1")["messages"][0] == {
        "role": "user",
        "content": "Hi",
    }


def test_sharegpt_roles_are_mapped_and_function_calls_kept() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "You help."},
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": "rain"},
            {"from": "gpt", "value": "It rains."},
        ]
    }
    messages = convert(row, "sharegpt", "s-0")["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }
    assert messages[3] == {"role": "tool", "content": "rain", "tool_call_id": "call_2"}
    assert validate_messages(messages) == []  # the gate takes it as it is
    with pytest.raises(ValueError, match=r"conversations\[0\]\.from: 'robot'"):
        convert({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt", "s-1")


def test_messages_folder_keeps_tool_calls_and_drops_arrow_nulls(tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    rows = [
        {
            "messages": [
                {"role": "user", "content": "add 1", "tool_calls": None, "tool_call_id": None},
                {"role": "assistant", "content": "", "tool_calls": [call], "tool_call_id": None},
                {"role": "tool", "content": "1", "tool_calls": None, "tool_call_id": "c1"},
                {"role": "assistant", "content": "One.", "tool_calls": None, "tool_call_id": None},
            ]
        }
    ]
    folder = tmp_path / "msgs"
    folder.mkdir()
    datasets.Dataset.from_list(rows).to_json(str(folder / "data.jsonl"))
    (got,) = rows_of(f"hf://{folder}?split=train&format=messages")
    assert got["id"] == "msgs-train-0"
    assert got["messages"][0] == {"role": "user", "content": "add 1"}  # Arrow's None keys left out
    assert got["messages"][1]["tool_calls"] == [call]
    assert got["messages"][2] == {"role": "tool", "content": "1", "tool_call_id": "c1"}
    assert validate_messages(got["messages"]) == []


def test_save_to_disk_folder_and_guessed_format(tmp_path: Path) -> None:
    datasets.DatasetDict({"test": datasets.Dataset.from_list(alpaca_rows(2))}).save_to_disk(str(tmp_path / "d"))
    got = rows_of(f"hf://{tmp_path}/d?split=test")
    assert [r["messages"][1]["content"] for r in got] == ["It is 0, reply 0.", "It is 2, reply 1."]
    with pytest.raises(ShapingError, match=r"no split 'train'.*has test"):
        rows_of(f"hf://{tmp_path}/d?split=train")


def test_column_mapping_renames_before_converting(tmp_path: Path) -> None:
    folder = parquet_folder(tmp_path / "qa", [{"prompt": "Capital of France?", "answer": "Paris."}])
    uri = f"hf://{folder}?format=alpaca"
    (got,) = rows_of(uri, {"instruction": "prompt", "output": "answer"})
    assert got["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    assert rename({"prompt": "p", "other": 1}, {"instruction": "prompt"}) == {"instruction": "p", "other": 1}
    with pytest.raises(ShapingError, match=r"fit no format.*dataset\.columns"):
        rows_of(f"hf://{folder}")


# parsing -----------------------------------------------------------------------------------------------------
def test_source_forms_parse(tmp_path: Path) -> None:
    pipeline, plain, uri, hub = parse_sources(
        [
            "identity_distillation",
            "data/manual/x.jsonl",
            "dataset://jsonl/data/manual/y.jsonl",
            "hf://org/set?revision=abc",
        ]
    )
    assert (pipeline.kind, pipeline.path) == ("pipeline", "identity_distillation")
    assert (plain.kind, plain.path) == ("jsonl", "data/manual/x.jsonl")
    assert (uri.kind, uri.path) == ("jsonl", "data/manual/y.jsonl")
    assert (hub.kind, hub.path, hub.split, hub.revision, hub.local) == ("hf", "org/set", "train", "abc", False)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("s3://bucket/x.jsonl", "unknown scheme s3://"),
        ("hf://org/set?splt=train", "unknown query key 'splt'"),
        ("hf://{tmp}/missing?split=train", "folder {tmp}/missing not found"),
        ("hf://org/set?format=csv", "format='csv'; choose alpaca, sharegpt, messages"),
    ],
)
def test_bad_source_is_one_clear_error_naming_its_index(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]], source: str, needle: str
) -> None:
    source, needle = source.format(tmp=tmp_path), needle.format(tmp=tmp_path)
    params = write_params(
        tmp_path,
        f"dataset.sources=[identity_distillation,'{source}']",
        f"paths.validated_dir={tmp_path}/validated",
    )
    proc = run_script("src/validate.py", "--params", str(params))
    assert_clear_failure(proc, f"dataset.sources[1]={source!r}: {needle}")
    assert (proc.stdout + proc.stderr).count("dataset.sources[1]") == 1, proc.stderr
    record = json.loads((tmp_path / "validated" / "run.json").read_text())
    assert record["exit_status"] == "failed" and "dataset.sources[1]" in record["error"]


# the stage ---------------------------------------------------------------------------------------------------
def test_bad_rows_of_an_hf_source_are_reported_by_index(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    rows = alpaca_rows(25)
    rows[3]["output"] = ""  # the converter cannot read it
    rows[7]["output"] = "<think>never closed"  # converted, then refused by the gate
    folder = parquet_folder(tmp_path / "manual" / "alpaca", rows)
    uri = f"hf://{folder}?split=train&format=alpaca"
    out = tmp_path / "validated"
    params = write_params(
        tmp_path, f"dataset.sources=['{uri}']", f"paths.validated_dir={out}", "validation.tests.path=null"
    )
    proc = run_script("src/validate.py", "--params", str(params))
    assert_clear_failure(proc, f"{uri} row 3: alpaca: output: missing or empty", f"{uri} row 7: messages[1].content")
    report = json.loads((out / "report.json").read_text())
    assert [(e["file"], e["row"]) for e in report["errors"]] == [(uri, 7), (uri, 3)]
    assert report["rows"] == {"read": 25, "valid": 23, "invalid": 2, "train": 0, "eval": 0}
    assert list(report["sources"]) == [uri]  # the temporary file is not named
    assert not (out / "train.jsonl").exists()
    record = json.loads((out / "run.json").read_text())
    (recorded,) = record["details"]["sources"]
    expected = datasets.load_dataset(str(folder), split="train")._fingerprint
    assert (recorded["uri"], recorded["fingerprint"], recorded["rows"]) == (uri, expected, 25)
    assert record["inputs"] == {(folder / "data.parquet").as_posix(): sha256_file(folder / "data.parquet")}


def test_hf_and_jsonl_uri_sources_pass_the_gate_and_are_split(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    folder = parquet_folder(tmp_path / "alpaca", alpaca_rows(20))
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"e{i}",
                    "messages": [
                        {"role": "user", "content": f"ping {i}"},
                        {"role": "assistant", "content": f"pong number {i}"},
                    ],
                }
            )
            + "\n"
            for i in range(5)
        )
        + json.dumps({"id": "e-tool", "messages": TRAJECTORY, "tools": TOOLS})  # a tool-call trajectory passes too
        + "\n"
    )
    out = tmp_path / "validated"
    params = write_params(
        tmp_path,
        f"dataset.sources=['hf://{folder}','dataset://jsonl/{extra}']",
        f"paths.validated_dir={out}",
        "validation.tests.path=null",
    )
    proc = run_script("src/validate.py", "--params", str(params))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    split = [
        json.loads(line) for name in ("train", "eval") for line in (out / f"{name}.jsonl").read_text().splitlines()
    ]
    assert len(split) == 26
    assert {r["id"] for r in split} == {f"alpaca-train-{i}" for i in range(20)} | {f"e{i}" for i in range(5)} | {
        "e-tool"
    }
    (kept,) = [r for r in split if r["id"] == "e-tool"]
    assert kept == {"id": "e-tool", "messages": TRAJECTORY, "tools": TOOLS}  # calls, results and tools kept
    assert list(json.loads((out / "report.json").read_text())["sources"]) == [f"hf://{folder}", str(extra)]


# preference datasets (TRL's prompt/chosen/rejected shapes) ---------------------------------------------------
def talk(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def test_preference_rows_in_trl_shapes_become_pairs_or_chat_rows(tmp_path: Path) -> None:
    strings = {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}
    assert convert(strings, "preference", "p-0", "preference") == {"id": "p-0", **strings}
    assert convert(strings, "preference", "p-0") == {  # dataset.format=chat: prompt + chosen, the rejected text
        "id": "p-0",
        "messages": talk(("user", "Sky colour?"), ("assistant", "Blue.")),
        "rejected": "Green.",
    }
    explicit = {
        "prompt": talk(("system", "Be brief."), ("user", "Sky colour?")),
        "chosen": talk(("assistant", "Blue.")),
        "rejected": talk(("assistant", "Green.")),
        "id": 4,
    }
    assert convert(explicit, "preference", "p-1", "preference") == {"id": "4", **{k: explicit[k] for k in strings}}
    implicit = {  # no prompt: the conversations' shared first messages are it (TRL's implicit prompt)
        "chosen": talk(("user", "Sky colour?"), ("assistant", "Blue.")),
        "rejected": talk(("user", "Sky colour?"), ("assistant", "Green.")),
    }
    assert convert(implicit, "preference", "p-2", "preference") == {
        "id": "p-2",
        "prompt": talk(("user", "Sky colour?")),
        "chosen": talk(("assistant", "Blue.")),
        "rejected": talk(("assistant", "Green.")),
    }
    folder = tmp_path / "implicit"  # through Arrow: every message gets every key, None where it had none
    folder.mkdir()
    lists = [{**implicit, "chosen": [{**m, "name": None} for m in implicit["chosen"]]}, implicit]
    datasets.Dataset.from_list(lists).to_json(str(folder / "data.jsonl"))
    assert [r["prompt"] for r in rows_of(f"hf://{folder}", target="preference")] == [talk(("user", "Sky colour?"))] * 2
    chat_row = convert(
        {"instruction": "Sky colour?", "output": "Blue.", "rejected": "Green."}, "alpaca", "a", "preference"
    )
    assert chat_row == {
        "id": "a",
        "prompt": talk(("user", "Sky colour?")),
        "chosen": talk(("assistant", "Blue.")),
        "rejected": "Green.",
    }


@pytest.mark.parametrize(
    ("row", "target", "needle"),
    [
        ({"prompt": "q", "rejected": "b"}, "preference", "chosen: missing or empty"),
        ({"prompt": "q", "chosen": "a", "rejected": 3}, "preference", "rejected: expected a string or a list"),
        ({"chosen": "a", "rejected": "b"}, "preference", "prompt: missing; string pairs need a prompt column"),
        (
            {"chosen": talk(("user", "q"), ("assistant", "a"))} | {"rejected": talk(("user", "q"))},
            "preference",
            "rejected: the same conversation as chosen",
        ),
        ({"prompt": "q", "chosen": talk(("user", "a")), "rejected": "b"}, "preference", r"chosen\[0\]\.role: 'user'"),
        (
            {"prompt": "q", "chosen": "a", "rejected": talk(("assistant", "b"), ("assistant", "c"))},
            "chat",
            "rejected: 2 messages",
        ),
        ({"instruction": "q", "output": "a"}, "preference", "rejected: missing; dataset.format=preference takes pairs"),
    ],
)
def test_unreadable_preference_row_names_its_field(row: dict[str, Any], target: str, needle: str) -> None:
    fmt = "alpaca" if "instruction" in row else "preference"
    with pytest.raises(ValueError, match=needle):
        convert(row, fmt, "x", target)


def test_preference_folder_feeds_the_preference_gate_bad_rows_by_index(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    rows = [
        {
            "prompt": f"Question {i}: what is {i} plus {i}?",
            "chosen": f"The sum is {2 * i}, twice {i}.",
            "rejected": f"The sum is {i + 1}, a guess.",
        }
        for i in range(25)
    ]
    rows[4]["chosen"] = ""  # the converter cannot read it
    rows[9]["rejected"] = rows[9]["chosen"]  # converted, then refused by the gate
    folder = parquet_folder(tmp_path / "prefs", rows)
    uri = f"hf://{folder}"  # format guessed from the columns
    out = tmp_path / "validated"
    overrides = [
        "dataset.format=preference",
        "dataset.schema=[]",
        f"paths.validated_dir={out}",
        "validation.tests.path=null",
    ]
    params = write_params(tmp_path, f"dataset.sources=['{uri}']", *overrides)
    proc = run_script("src/validate.py", "--params", str(params))
    assert_clear_failure(
        proc, f"{uri} row 4: preference: chosen: missing or empty", f"{uri} row 9: rejected: identical"
    )
    report = json.loads((out / "report.json").read_text())
    assert sorted(e["row"] for e in report["errors"]) == [4, 9] and report["rows"]["valid"] == 23
    del rows[9], rows[4]
    folder = parquet_folder(tmp_path / "good", rows)
    params = write_params(tmp_path, f"dataset.sources=['hf://{folder}?format=preference']", *overrides)
    proc = run_script("src/validate.py", "--params", str(params))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    split = [
        json.loads(line) for name in ("train", "eval") for line in (out / f"{name}.jsonl").read_text().splitlines()
    ]
    assert sorted(r["id"] for r in split) == sorted(f"good-train-{i}" for i in range(23))
    assert {(r["prompt"], r["chosen"], r["rejected"]) for r in split} == {
        (r["prompt"], r["chosen"], r["rejected"]) for r in rows
    }


# to_trajectories ---------------------------------------------------------------------------------------------
CALL: dict[str, Any] = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
TRAJECTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "1+2?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "3", "tool_call_id": "c1"},
    {"role": "assistant", "content": "3."},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "Any time."},
]


TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {}}}]


def test_trajectories_keep_turns_and_tool_calls() -> None:
    (got,) = to_trajectories([{"id": "t", "messages": TRAJECTORY, "tools": TOOLS}])
    assert got == {"messages": TRAJECTORY, "tools": TOOLS}


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([TRAJECTORY[1], TRAJECTORY[3], TRAJECTORY[4]], r"rows:2: messages\[1\]: a tool message must answer"),
        (
            [*TRAJECTORY[1:3], {**TRAJECTORY[3], "tool_call_id": "zz"}, TRAJECTORY[4]],
            r"rows:2: messages\[2\]\.tool_call_id: 'zz'",
        ),
        ([TRAJECTORY[1], {"role": "assistant", "content": "", "tool_calls": [{}]}], r"tool_calls\[0\]\.id: missing"),
        (TRAJECTORY[:3], r"rows:2: messages\[2\]\.tool_calls\[0\]\.id: call 'c1' has no tool message"),
        (TRAJECTORY[:4], r"rows:2: messages: the last message must be the assistant's"),
        ([TRAJECTORY[1], {"role": "robot", "content": "x"}], r"messages\[1\]\.role: 'robot'"),
    ],
)
def test_malformed_trajectory_names_the_row(messages: list[dict[str, Any]], needle: str) -> None:
    good = {"id": "ok", "messages": TRAJECTORY}
    with pytest.raises(ShapingError, match=needle):
        to_trajectories([good, {"id": "bad", "messages": messages}])


def test_unreachable_hub_dataset_is_one_clear_error() -> None:
    # the tests run with HF_HUB_OFFLINE=1 (conftest): the hub path is taken and refused, no traceback
    with pytest.raises(ShapingError, match=r"dataset\.sources\[0\]='hf://nobody/nothing\?revision=abc': cannot load"):
        rows_of("hf://nobody/nothing?revision=abc")
