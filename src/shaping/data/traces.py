"""Production traces as chat rows: `trace://langfuse/<project>/<name>[?limit=N]` in dataset.sources.

Every trace named <name> in LangFuse project <project> (oldest first; at most `limit`) becomes one
chat row `{"id": <trace id>, "messages": [...]}`: the conversation of its last GENERATION
observation (the final model call, whose input holds the conversation so far: system, user,
assistant and tool turns, tool calls kept) followed by that generation's output as the assistant's
reply. Traces are listed page by page (`api.trace.list`) and each trace's generations cursor by
cursor (`api.observations.get_many`), through the LangFuse SDK (the `langfuse` extra), with the
keys in LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY and the server in LANGFUSE_HOST (LangFuse
Cloud if unset). The keys are per project: the project they belong to must be <project> (its name
or id). A trace no row can be made of is reported as `<uri> row N` by the validation gate.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from shaping.errors import ShapingError

if TYPE_CHECKING:
    from shaping.data.sources import Loaded, Source

KEY_ENVS = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY")
HOST_ENV = "LANGFUSE_HOST"
EXTRA = "pip install -e '.[langfuse]'"
TRACES_PER_PAGE = 50  # api.trace.list's page size
OBSERVATIONS_PER_PAGE = 100  # api.observations.get_many's page size (at most 1000)


def client(where: str, uri: str) -> Any:
    """A LangFuse client for reading (no tracing of its own), keys from the environment."""
    try:
        from langfuse import Langfuse
    except ImportError as err:
        raise ShapingError(f"{where}={uri!r}: trace://langfuse needs the langfuse extra: {EXTRA} ({err})") from None
    missing = [name for name in KEY_ENVS if not os.environ.get(name)]
    if missing:
        raise ShapingError(
            f"{where}={uri!r}: {' and '.join(missing)} not set; export the LangFuse project's keys "
            f"({', '.join(KEY_ENVS)}, and {HOST_ENV} for a self-hosted server): keys never go in the config"
        )
    return Langfuse(
        public_key=os.environ[KEY_ENVS[0]],
        secret_key=os.environ[KEY_ENVS[1]],
        host=os.environ.get(HOST_ENV) or None,
        tracing_enabled=False,
    )


def _scrub(text: str) -> str:
    """`text` with the LangFuse keys' values masked (an SDK error may echo a request)."""
    for name in KEY_ENVS:
        if value := os.environ.get(name):
            text = text.replace(value, "***")
    return text


def traces(api: Any, name: str, limit: int | None) -> Iterator[Any]:
    """The traces named `name`, oldest first, page after page until the last (or `limit` traces)."""
    page, seen = 1, 0
    while True:
        listed = api.trace.list(name=name, page=page, limit=TRACES_PER_PAGE, order_by="timestamp.asc", fields="core")
        for trace in listed.data:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield trace
        if not listed.data or page >= listed.meta.total_pages:
            return
        page += 1


def generations(api: Any, trace_id: str) -> list[Any]:
    """The trace's GENERATION observations with their input and output, oldest first, cursor after cursor."""
    found: list[Any] = []
    cursor: str | None = None
    while True:
        response = api.observations.get_many(
            trace_id=trace_id, type="GENERATION", fields="core,basic,io", limit=OBSERVATIONS_PER_PAGE, cursor=cursor
        )
        found.extend(response.data)
        cursor = response.meta.cursor
        if not cursor or not response.data:
            return sorted(found, key=lambda o: o.start_time)


def _json(value: Any) -> Any:
    """Input and output come back as raw strings (the v4 API): JSON where they parse."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _content(value: Any, where: str) -> Any:
    """Text parts ([{"type": "text", "text": ...}]) joined into one string; None and strings kept."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text") or "") for p in value)
    raise ValueError(f"{where}: only text content can become a chat row, got {type(value).__name__}")


MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def _message(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("role"), str):
        raise ValueError(f"{where}: expected a message with role and content")
    message = {k: value[k] for k in MESSAGE_KEYS if value.get(k) is not None}
    message["content"] = _content(value.get("content"), f"{where}.content")
    return message


def conversation(generation: Any) -> list[dict[str, Any]]:
    """The generation's input messages and its output as the assistant's reply; ValueError names
    the field (input or output) that could not be read."""
    given = _json(generation.input)
    if isinstance(given, Mapping) and "messages" in given:
        given = given["messages"]
    if isinstance(given, str) and given.strip():
        messages = [{"role": "user", "content": given}]
    elif isinstance(given, list) and given:
        messages = [_message(m, f"input[{i}]") for i, m in enumerate(given)]
    else:
        raise ValueError("input: expected a list of messages or a prompt string")
    reply = _json(generation.output)
    if isinstance(reply, Mapping) and isinstance(reply.get("choices"), list) and reply["choices"]:
        reply = reply["choices"][0].get("message")  # a whole chat.completion
    if isinstance(reply, str) and reply.strip():
        return [*messages, {"role": "assistant", "content": reply}]
    if isinstance(reply, Mapping):
        message = _message({"role": "assistant", **reply}, "output")
        if message["role"] != "assistant":
            raise ValueError(f"output.role: {message['role']!r}; the reply must be the assistant's")
        if message.get("content") or message.get("tool_calls"):
            return [*messages, message]
    raise ValueError("output: no reply (expected the assistant's message or text)")


def materialize_traces(source: Source, where: str, out: BinaryIO) -> Loaded:
    """Write one chat row per trace to `out`, in order; a trace no row can be made of becomes a
    placeholder line and its error (`Loaded.unconvertible`)."""
    from shaping.data.sources import PLACEHOLDER_KEY, Loaded

    project, _, name = source.path.partition("/")
    lf = client(where, source.uri)
    loaded = Loaded(source, format="langfuse")
    digest = hashlib.sha256()
    try:
        projects = lf.api.projects.get().data
        if not any(project in (p.id, p.name) for p in projects):
            owned = ", ".join(f"{p.name} ({p.id})" for p in projects) or "none"
            raise ShapingError(
                f"{where}={source.uri!r}: the keys in {KEY_ENVS[0]}/{KEY_ENVS[1]} belong to project {owned}, "
                f"not {project!r}; export that project's keys or fix the URI"
            )
        for index, trace in enumerate(traces(lf.api, name, source.limit)):
            found = generations(lf.api, trace.id)
            digest.update(f"{trace.id}:{','.join(o.id for o in found)};".encode())
            try:
                if not found:
                    raise ValueError("no GENERATION observation (nothing a model said)")
                line = orjson.dumps({"id": trace.id, "messages": conversation(found[-1])})
            except (ValueError, TypeError) as err:
                loaded.unconvertible[index + 1] = f"langfuse: trace {trace.id}: {err}"
                line = orjson.dumps({PLACEHOLDER_KEY: index})
            out.write(line + b"\n")
            loaded.rows += 1
    except ShapingError:
        raise
    except Exception as err:  # the SDK's ApiError (401, 404), httpx's connection errors, ...
        raise ShapingError(
            f"{where}={source.uri!r}: LangFuse refused or failed: {type(err).__name__}: {_scrub(str(err))[:500]}"
        ) from None
    loaded.fingerprint = digest.hexdigest()[:16]
    return loaded
