"""Dataset sources: what each entry of `dataset.sources` names, and hub or local datasets as chat rows.

    identity_distillation                         a pipeline: data/synth/<name>/samples.jsonl
    data/manual/extra.jsonl                       a JSONL file (a path ending .jsonl)
    dataset://jsonl/data/manual/extra.jsonl       the same, spelled as a URI
    hf://data/manual/alpaca?split=train&format=alpaca
    hf://owner/name?split=train&revision=<sha>&format=sharegpt
    hf://owner/prefs?split=train&revision=<sha>&format=preference
    trace://langfuse/<project>/<trace name>[?limit=N]   production traces (shaping.data.traces)

An `hf://` source is loaded with `datasets` (a local folder of parquet/json/arrow files, a
`save_to_disk` folder, or a hub dataset id) and each row converted by its `format`'s converter
(alpaca, sharegpt, messages: a chat row `{"id", "messages"[, "rejected"]}`; preference: TRL's
prompt/chosen/rejected shapes as a pair `{"id", "prompt", "chosen", "rejected"}`; guessed from the
columns when not given), after `dataset.columns` renamed its columns, then made a row of
`dataset.format` (a pair becomes a chat row with its rejected reply, a chat row with `rejected` a
pair). `materialize` writes the converted rows to a JSONL file, one line per dataset row (line N =
row N-1), that the validation gate scans like any other; a row no converter can read becomes a
placeholder line and its error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs

import orjson

from shaping.errors import ShapingError

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "sharegpt", "messages", "preference")
QUERY_KEYS = ("split", "revision", "format")
TRACE_KEYS = ("limit",)
ACCEPTED = (
    "a pipeline name, a path ending .jsonl, dataset://jsonl/<path>, "
    "hf://<dataset id or local folder>[?split=...&revision=...&format=alpaca|sharegpt|messages|preference], or "
    "trace://langfuse/<project>/<trace name>[?limit=N]"
)
# what a row no converter could read becomes in the materialised file: the gate refuses it (no messages),
# and the stage reports the converter's message in place of the gate's
PLACEHOLDER_KEY = "__unconvertible__"


@dataclass
class Source:
    """One entry of `dataset.sources`: `kind` is pipeline, jsonl, hf or trace."""

    uri: str
    kind: str
    path: str  # pipeline name, file path, dataset id / local folder, or <project>/<trace name>
    split: str = "train"
    revision: str | None = None
    format: str | None = None
    limit: int | None = None  # trace: at most this many traces

    @property
    def local(self) -> bool:
        return self.kind == "hf" and _looks_local(self.path)


def parse_source(text: str, where: str) -> Source:
    """`text` (an entry of dataset.sources, named `where` in errors) as a Source."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Source(text, "jsonl" if text.endswith(".jsonl") else "pipeline", text)
    if scheme == "dataset":
        kind, _, path = rest.partition("/")
        if kind != "jsonl" or not path:
            raise ShapingError(f"{where}={text!r}: dataset:// takes jsonl/<path> (dataset://jsonl/data/x.jsonl)")
        return Source(text, "jsonl", path)
    if scheme == "trace":
        return parse_trace(text, rest, where)
    if scheme != "hf":
        raise ShapingError(f"{where}={text!r}: unknown scheme {scheme}://; use {ACCEPTED}")
    path, _, query = rest.partition("?")
    if not path:
        raise ShapingError(f"{where}={text!r}: no dataset id or folder after hf://")
    params = parse_query(text, query, where, "hf", QUERY_KEYS, "key=value&...")
    one = {key: values[-1] for key, values in params.items()}
    fmt = one.get("format") or None
    if fmt is not None and fmt not in FORMATS:
        raise ShapingError(f"{where}={text!r}: format={fmt!r}; choose {', '.join(FORMATS)}")
    source = Source(text, "hf", path, one.get("split") or "train", one.get("revision") or None, fmt)
    if source.local and not Path(path).is_dir():
        raise ShapingError(f"{where}={text!r}: folder {path} not found")
    return source


def parse_query(text: str, query: str, where: str, scheme: str, keys: Iterable[str], form: str) -> dict[str, list[str]]:
    """A source URI's query string; a malformed one or an unknown key is one error naming the URI."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ShapingError(f"{where}={text!r}: malformed query {query!r}; use {form}") from None
    unknown = sorted(set(params) - set(keys))
    if unknown:
        raise ShapingError(f"{where}={text!r}: unknown query key {unknown[0]!r}; {scheme}:// takes {', '.join(keys)}")
    return params


def parse_trace(text: str, rest: str, where: str) -> Source:
    """trace://langfuse/<project>/<trace name>[?limit=N]: the traces of that name in that project."""
    path, _, query = rest.partition("?")
    vendor, _, named = path.partition("/")
    project, _, name = named.partition("/")
    if vendor != "langfuse" or not project or not name:
        raise ShapingError(
            f"{where}={text!r}: trace:// takes langfuse/<project>/<trace name> (trace://langfuse/app/chat)"
        )
    params = parse_query(text, query, where, "trace", TRACE_KEYS, "limit=N")
    limit = params.get("limit", [None])[-1]
    if limit is not None and not (limit.isdigit() and int(limit) > 0):
        raise ShapingError(f"{where}={text!r}: limit={limit!r}; give a positive number of traces")
    return Source(text, "trace", f"{project}/{name}", limit=int(limit) if limit else None)


def parse_sources(texts: Iterable[str]) -> list[Source]:
    return [parse_source(text, f"dataset.sources[{i}]") for i, text in enumerate(texts)]


def _looks_local(path: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (or an existing folder) is a local folder."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or Path(path).is_dir()


# converters: one dataset row (columns already renamed) -> messages -------------------------------------
Messages = list[dict[str, Any]]


def _text(row: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"{key}: missing or empty")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def from_alpaca(row: Mapping[str, Any]) -> Messages:
    """instruction (+ input, on the next paragraph) -> user, output -> assistant; optional system."""
    instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
    messages: Messages = []
    if system := _text(row, "system", required=False):
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
    messages.append({"role": "assistant", "content": _text(row, "output")})
    return messages


SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
    "function_call": "assistant",
}


def from_sharegpt(row: Mapping[str, Any]) -> Messages:
    """conversations [{from, value}]: human/gpt/system/tool roles mapped. A function_call turn (its value the
    JSON {name, arguments}) becomes a tool call of an assistant message (consecutive ones, one message),
    with the id `call_<turn index>`; each tool turn after it answers the oldest call not yet answered."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversations: expected a non-empty list of {from, value}")
    messages: Messages = []
    waiting: list[str] = []  # ids of calls no tool turn has answered yet
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise ValueError(f"conversations[{i}]: expected an object with from and value")
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise ValueError(f"conversations[{i}].from: {speaker!r} is not one of {', '.join(SHAREGPT_ROLES)}")
        value = turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"conversations[{i}].value: expected a string, got {type(value).__name__}")
        if speaker == "function_call":
            try:
                call = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValueError(
                    f"conversations[{i}].value: a function_call must be JSON {{name, arguments}}"
                ) from None
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError(f"conversations[{i}].value: a function_call must be JSON {{name, arguments}}")
            arguments = call.get("arguments", {})
            function = {
                "name": call["name"],
                "arguments": arguments if isinstance(arguments, str) else _json(arguments),
            }
            made: dict[str, Any] = {"id": f"call_{i}", "type": "function", "function": function}
            waiting.append(made["id"])
            previous = messages[-1] if messages else {}
            if previous.get("role") == "assistant" and previous.get("tool_calls"):
                previous["tool_calls"].append(made)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [made]})
        elif role == "tool":
            answered = {"tool_call_id": waiting.pop(0)} if waiting else {}  # none: the gate names the turn
            messages.append({"role": role, "content": value, **answered})
        else:
            waiting.clear()
            messages.append({"role": role, "content": value})
    return messages


MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def from_messages(row: Mapping[str, Any]) -> Messages:
    """OpenAI `messages` as they are: role, content, and tool_calls / tool_call_id / name where set (a tool
    call's `arguments` given as an object becomes its JSON string)."""
    return _read_messages(row.get("messages"), "messages")


def _read_messages(messages: Any, key: str) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{key}: expected a non-empty list of {{role, content}}")
    out: Messages = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(f"{key}[{i}]: expected an object with role and content")
        # an Arrow struct column gives every message every key, None where a row lacked it
        kept = {k: message[k] for k in MESSAGE_KEYS if message.get(k) is not None}
        kept.setdefault("content", message.get("content"))
        if isinstance(kept.get("tool_calls"), list):
            kept["tool_calls"] = [_openai_call(call) for call in kept["tool_calls"]]
        out.append(kept)
    return out


def _side(value: Any, key: str) -> str | Messages:
    """One side of a preference pair: a non-empty string, or a non-empty list of messages."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value:
        return _read_messages(value, key)
    if value is None or value in ("", []):
        raise ValueError(f"{key}: missing or empty")
    raise ValueError(f"{key}: expected a string or a list of messages, got {type(value).__name__}")


def from_preference(row: Mapping[str, Any]) -> dict[str, Any]:
    """TRL's preference shapes as this project's pair {prompt, chosen, rejected}: each a string or a list of
    messages (explicit prompt); without a prompt, chosen and rejected are whole conversations whose
    shared first messages are the prompt (TRL's implicit prompt, as its `extract_prompt` splits it)."""
    chosen, rejected = _side(row.get("chosen"), "chosen"), _side(row.get("rejected"), "rejected")
    if row.get("prompt") is not None and row.get("prompt") not in ("", []):
        prompt = _side(row["prompt"], "prompt")
    elif isinstance(chosen, list) and isinstance(rejected, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise ValueError("prompt: missing, and chosen and rejected share no first message (the implicit prompt)")
        if shared == len(chosen) or shared == len(rejected):
            raise ValueError("rejected: the same conversation as chosen, or a part of it: no reply to compare")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    else:
        raise ValueError("prompt: missing; string pairs need a prompt column (map one with dataset.columns)")
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(side, list) and side[0].get("role") != "assistant":
            raise ValueError(f"{key}[0].role: {side[0].get('role')!r}; a reply starts with the assistant's message")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _openai_call(call: Any) -> Any:
    """A tool call in OpenAI's shape: `arguments` an object (transformers' chat-template convention) becomes
    its JSON string; Arrow's None keys are left out. Anything else is kept for the gate to report."""
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        return call
    function = {k: v for k, v in call["function"].items() if v is not None}
    if isinstance(function.get("arguments"), Mapping):
        function["arguments"] = _json(function["arguments"])
    return {**{k: v for k, v in call.items() if v is not None}, "function": function}


Converter = Callable[[Mapping[str, Any]], dict[str, Any]]


def _chat(read: Callable[[Mapping[str, Any]], Messages]) -> Converter:
    """A converter to a chat row's body: the messages `read` gives, and the row's `rejected` reply if set."""

    def body(row: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": read(row)}
        if row.get("rejected") is not None:
            out["rejected"] = row["rejected"]
        return out

    return body


# format -> a row's body: chat {messages[, rejected]} or a pair {prompt, chosen, rejected}
CONVERTERS: dict[str, Converter] = {
    "alpaca": _chat(from_alpaca),
    "sharegpt": _chat(from_sharegpt),
    "messages": _chat(from_messages),
    "preference": from_preference,
}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def guess_format(columns: Iterable[str]) -> str | None:
    names = set(columns)
    if {"chosen", "rejected"} <= names:
        return "preference"
    if "messages" in names:
        return "messages"
    if "conversations" in names:
        return "sharegpt"
    if {"instruction", "output"} <= names:
        return "alpaca"
    return None


def rename(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """`columns` maps a converter's name to the dataset's column ({instruction: prompt}): renamed back."""
    taken = set(columns.values())
    out = {k: v for k, v in row.items() if k not in taken}
    for name, column in columns.items():
        if column in row:
            out[name] = row[column]
    return out


def convert(row: Mapping[str, Any], fmt: str, default_id: str, target: str = "chat") -> dict[str, Any]:
    """One dataset row (columns renamed) as a row of dataset.format `target`: chat {id, messages[, rejected]}
    or preference {id, prompt, chosen, rejected}; ValueError names the field that could not be read."""
    body = CONVERTERS[fmt](row)
    if target == "preference" and "messages" in body:
        body = _as_pair(body)
    elif target == "chat" and "messages" not in body:
        body = _as_chat(body)
    return {"id": str(row["id"]) if row.get("id") is not None else default_id, **body}


def _as_pair(body: dict[str, Any]) -> dict[str, Any]:
    """A chat row with a `rejected` reply as a pair: its messages before the final reply are the prompt."""
    messages = body["messages"]
    if body.get("rejected") is None:
        raise ValueError("rejected: missing; dataset.format=preference takes pairs (a rejected column)")
    if messages[-1].get("role") != "assistant" or len(messages) < 2:
        raise ValueError("messages: the last message must be the assistant's reply (the chosen one)")
    return {"prompt": messages[:-1], "chosen": messages[-1:], "rejected": body["rejected"]}


def _as_chat(pair: dict[str, Any]) -> dict[str, Any]:
    """A pair as a chat row: prompt + chosen are the messages, the rejected reply's text is `rejected`."""

    def listed(value: str | Messages, role: str) -> Messages:
        return [{"role": role, "content": value}] if isinstance(value, str) else value

    rejected = pair["rejected"]
    if isinstance(rejected, list):
        if len(rejected) != 1 or not isinstance(rejected[0].get("content"), str):
            raise ValueError(
                f"rejected: {len(rejected)} messages; a chat row's rejected is one reply's text: set "
                "dataset.format=preference to keep the pair whole"
            )
        rejected = rejected[0]["content"]
    return {"messages": listed(pair["prompt"], "user") + listed(pair["chosen"], "assistant"), "rejected": rejected}


# loading and materialising ---------------------------------------------------------------------------
@dataclass
class Loaded:
    """What materialising one hf source found: for the run record and the gate's error messages."""

    source: Source
    rows: int = 0
    format: str | None = None
    fingerprint: str | None = None  # datasets' fingerprint of the loaded split (trace: of the ids read)
    resolved_revision: str | None = None  # the hub commit the split was read at
    unconvertible: dict[int, str] = field(default_factory=dict)  # line -> "field: message"

    def record(self) -> dict[str, Any]:
        if self.source.kind == "trace":  # fingerprint: a hash of the trace and generation ids read
            return {
                "uri": self.source.uri,
                "path": self.source.path,
                "limit": self.source.limit,
                "fingerprint": self.fingerprint,
                "format": self.format,
                "rows": self.rows,
            }
        return {
            "uri": self.source.uri,
            "path": self.source.path,
            "split": self.source.split,
            "revision": self.source.revision,
            "resolved_revision": self.resolved_revision,
            "fingerprint": self.fingerprint,
            "format": self.format,
            "rows": self.rows,
        }


def load(source: Source, where: str) -> tuple[Any, str | None]:
    """(the split as a datasets.Dataset, the hub commit it was read at or None for a local folder)."""
    import datasets

    path = source.path
    try:
        if source.local and any((Path(path) / name).is_file() for name in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise ShapingError(
                        f"{where}={source.uri!r}: no split {source.split!r}; {path} has {', '.join(loaded)}"
                    )
                loaded = loaded[source.split]
            return loaded, None
        builder = datasets.load_dataset_builder(path, revision=None if source.local else source.revision)
        builder.download_and_prepare()
        if source.split not in (builder.info.splits or {}):
            found = ", ".join(builder.info.splits or {}) or "none"
            raise ShapingError(f"{where}={source.uri!r}: no split {source.split!r}; it has {found}")
        resolved = None if source.local else builder.hash
        return builder.as_dataset(split=source.split), resolved
    except ShapingError:
        raise
    except Exception as err:  # datasets raises many kinds (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        raise ShapingError(f"{where}={source.uri!r}: cannot load {path}: {type(err).__name__}: {err}") from None


def materialize(source: Source, where: str, columns: Mapping[str, str], out: BinaryIO, target: str = "chat") -> Loaded:
    """Write the source's rows to `out` as rows of dataset.format `target` (chat or preference; traces are
    chat rows), one line per dataset row (or trace), in order."""
    if source.kind == "trace":
        from shaping.data.traces import materialize_traces

        return materialize_traces(source, where, out)
    dataset, resolved = load(source, where)
    if source.revision is None and not source.local:
        log.warning("%s=%s: no revision: the hub dataset is not pinned (recorded at %s)", where, source.uri, resolved)
    names = set(rename(dict.fromkeys(dataset.column_names), columns))
    fmt = source.format or guess_format(names)
    if fmt is None:
        raise ShapingError(
            f"{where}={source.uri!r}: columns {', '.join(sorted(names))} fit no format; add &format="
            f"{'|'.join(FORMATS)} and map columns with dataset.columns (e.g. {{instruction: prompt}})"
        )
    loaded = Loaded(source, format=fmt, fingerprint=getattr(dataset, "_fingerprint", None), resolved_revision=resolved)
    stem = Path(source.path).name or source.path
    for index, row in enumerate(dataset):
        try:
            line = orjson.dumps(convert(rename(row, columns), fmt, f"{stem}-{source.split}-{index}", target))
        except (ValueError, TypeError) as err:  # orjson.JSONEncodeError is a TypeError
            loaded.unconvertible[index + 1] = f"{fmt}: {err}"
            line = orjson.dumps({PLACEHOLDER_KEY: index})
        out.write(line + b"\n")
        loaded.rows += 1
    return loaded
