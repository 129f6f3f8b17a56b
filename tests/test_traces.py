"""trace://langfuse/<project>/<name> sources: production traces as chat rows, through the LangFuse SDK's
client objects (faked: tests/fake_langfuse.py, the one remote service the project fakes), paginated."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from shaping.data.sources import materialize, parse_source
from shaping.data.transforms import to_sft
from shaping.errors import ShapingError

from . import fake_langfuse
from .test_stage_errors import assert_clear_failure, run_script, write_params

__all__ = ["run_script"]  # the fixture, used by name

WHERE = "dataset.sources[0]"
PUBLIC, SECRET = "pk-lf-test-3b1e", "sk-lf-test-9c7d-not-real"
URI = "trace://langfuse/shop-assistant/chat"
CALL = {"id": "call_1", "type": "function", "function": {"name": "stock", "arguments": '{"sku": "A7"}'}}


def turn(question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are the shop's assistant."}, {"role": "user", "content": question}]


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> fake_langfuse.Store:
    """A LangFuse project with 120 `chat` traces (three pages of 50) and other traces between them;
    the SDK module faked, the keys in the environment."""
    project = fake_langfuse.Project("cl-proj-1", "shop-assistant", fake_langfuse.Organization("org-1", "Shop"))
    store = fake_langfuse.Store(project, PUBLIC, SECRET)
    for i in range(120):
        if i == 1:  # a multi-turn trace with a tool call: the last generation holds the whole conversation
            first = turn("Is A7 in stock?")
            called = {"role": "assistant", "content": None, "tool_calls": [CALL]}
            answered = {"role": "tool", "content": "12 left", "tool_call_id": "call_1"}
            store.add_trace(
                "chat", [(first, called), ([*first, called, answered], {"role": "assistant", "content": "Yes, 12."})]
            )
        elif i == 2:  # an agent trace with 130 generations: two cursor pages of observations
            store.add_trace("chat", [(turn(f"step {j}"), f"done {j}") for j in range(130)])
        elif i == 3:  # a prompt string in, a whole chat.completion out, text parts in the reply
            reply = {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]}}
                ]
            }
            store.add_trace("chat", [("Say hi", reply)])
        else:
            store.add_trace("chat", [(turn(f"Question {i}?"), {"role": "assistant", "content": f"Answer {i}."})])
        if i % 40 == 0:
            store.add_trace("checkout", [(turn("pay"), "paid")])
    monkeypatch.setitem(sys.modules, "langfuse", fake_langfuse.module(store))
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET)
    monkeypatch.setenv("LANGFUSE_HOST", "https://langfuse.internal.example")
    return store


def rows_of(uri: str) -> list[dict[str, Any]]:
    out = io.BytesIO()
    loaded = materialize(parse_source(uri, WHERE), WHERE, {}, out)
    assert loaded.rows == len(out.getvalue().splitlines()) and not loaded.unconvertible
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_langfuse_traces_become_chat_rows_page_after_page(store: fake_langfuse.Store) -> None:
    rows = rows_of(URI)
    assert [r["id"] for r in rows] == [t.id for t in store.traces if t.name == "chat"]  # oldest first, all 120
    assert rows[0]["messages"] == [*turn("Question 0?"), {"role": "assistant", "content": "Answer 0."}]
    assert rows[1]["messages"] == [
        *turn("Is A7 in stock?"),
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "12 left", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "Yes, 12."},
    ]
    assert rows[2]["messages"] == [*turn("step 129"), {"role": "assistant", "content": "done 129"}]  # the last of 130
    assert rows[3]["messages"] == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    pages = [c for name, c in store.calls if name == "trace.list"]
    assert [c["page"] for c in pages] == [1, 2, 3] and {c["name"] for c in pages} == {"chat"}
    cursors = [
        c["cursor"] for name, c in store.calls if name == "observations.get_many" and c["trace_id"] == rows[2]["id"]
    ]
    assert cursors == [None, "100"]
    assert store.clients == [{"host": "https://langfuse.internal.example", "base_url": None, "tracing_enabled": False}]
    sft = to_sft(rows)  # SFT rows as the trainer takes them
    assert len(sft) == 120 and sft[0]["messages"][-1] == {"role": "assistant", "content": "Answer 0."}


def test_limit_stops_listing(store: fake_langfuse.Store) -> None:
    rows = rows_of(f"{URI}?limit=5")
    assert [r["id"] for r in rows] == [t.id for t in store.traces if t.name == "chat"][:5]
    assert [c["page"] for name, c in store.calls if name == "trace.list"] == [1]


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("trace://phoenix/app/chat", "trace:// takes langfuse/<project>/<trace name>"),
        ("trace://langfuse/app", "trace:// takes langfuse/<project>/<trace name>"),
        ("trace://langfuse/app/chat?limit=0", "limit='0'; give a positive number"),
        ("trace://langfuse/app/chat?since=x", "unknown query key 'since'; trace:// takes limit"),
    ],
)
def test_malformed_trace_uri_is_named(uri: str, needle: str) -> None:
    with pytest.raises(ShapingError, match=rf"{WHERE}='{uri}'.*{needle}".replace("?", r"\?").replace("[", r"\[")):
        parse_source(uri, WHERE)


def test_wrong_project_keys_and_missing_extra_are_clear(
    store: fake_langfuse.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ShapingError, match=r"belong to project shop-assistant \(cl-proj-1\), not 'other'"):
        rows_of("trace://langfuse/other/chat")
    assert rows_of("trace://langfuse/cl-proj-1/chat?limit=1")  # the project's id works as its name does
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-wrong-1234")
    with pytest.raises(
        ShapingError, match=r"LangFuse refused or failed: UnauthorizedError: status_code: 401"
    ) as caught:
        rows_of(URI)
    assert "sk-lf-wrong-1234" not in str(caught.value)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY")
    with pytest.raises(ShapingError, match=r"LANGFUSE_SECRET_KEY not set"):
        rows_of(URI)
    monkeypatch.setitem(sys.modules, "langfuse", None)  # the extra not installed
    with pytest.raises(
        ShapingError, match=r"trace://langfuse needs the langfuse extra: pip install -e '\.\[langfuse\]'"
    ):
        rows_of(URI)


def test_traces_no_row_can_be_made_of_are_named_by_row_in_the_gate(
    store: fake_langfuse.Store, tmp_path: Any, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # row 1 (rows count from 0) is the tool-call trace: the gate's schema (conf/dataset) takes it
    store.traces = [t for t in store.traces if t.name == "chat"][:20]
    store.observations = [o for o in store.observations if o.trace_id != "tr-0009"]  # row 8: no generation at all
    bad = store.add_trace("chat", [(turn("Who is it?"), {"role": "user", "content": "me"})])  # row 20
    out = tmp_path / "validated"
    params = write_params(
        tmp_path, f"dataset.sources=['{URI}']", f"paths.validated_dir={out}", "validation.tests.path=null"
    )
    proc = run_script("src/validate.py", "--params", str(params))
    assert_clear_failure(
        proc,
        f"{URI} row 8: langfuse: trace tr-0009: no GENERATION observation",
        f"{URI} row 20: langfuse: trace {bad}: output.role: 'user'",
    )
    report = json.loads((out / "report.json").read_text())
    assert sorted((e["file"], e["row"]) for e in report["errors"]) == [(URI, 8), (URI, 20)]
    assert report["rows"]["read"] == 21 and report["rows"]["valid"] == 19
    (recorded,) = json.loads((out / "run.json").read_text())["details"]["sources"]
    assert (recorded["uri"], recorded["rows"], recorded["format"]) == (URI, 21, "langfuse")
    assert SECRET not in proc.stdout + proc.stderr + (out / "run.json").read_text()


def test_traces_become_dspy_examples(store: fake_langfuse.Store) -> None:
    from shaping.data.transforms import to_dspy_examples

    (example,) = to_dspy_examples(rows_of(f"{URI}?limit=1"), "prompt -> reply", ["prompt"], "reply")
    assert (example.prompt, example.reply) == ("Question 0?", "Answer 0.") and set(example.inputs()) == {"prompt"}
