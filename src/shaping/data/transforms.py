"""Dataset transforms: validated rows -> what a TRL trainer reads.

    to_sft(rows)          {"messages": [...]}                            SFTTrainer (conversational)
    to_preferences(rows)  {"prompt": [...], "chosen": [...], "rejected": [...]}  DPOTrainer (conversational)
    to_unpaired(rows)     {"prompt": [...], "completion": [...], "label": bool}      KTOTrainer (conversational)
    to_trajectories(rows) {"messages": [...][, "tools": [...]]}         SFTTrainer, multi-turn with tool calls
    to_prompts(rows)      {"prompt": [...], "reference": str}            GRPOTrainer (conversational; the reply as text)
    to_dspy_examples(rows, signature, input_fields, output_field)  dspy.Example list  DSPy optimisers (GEPA)

The first three accept the two formats the validate stage writes: chat rows `{id, messages[, rejected]}` and
preference rows `{id, prompt, chosen, rejected}` (strings or lists of messages). A chat row becomes
a preference pair when it carries `rejected`: the reply to prefer less than its final assistant
message (identity_distillation stores the base model's reply without the identity there).
`to_unpaired` splits each pair into a desirable row (the chosen reply, label True) and an undesirable
one (the rejected reply, label False), shuffled with a seed.
`to_trajectories` takes chat rows only and keeps each conversation whole, tool calls included: an
assistant message's `tool_calls` (OpenAI's `{id, type?, function: {name, arguments: <JSON string>}}`) and
the `tool` messages answering them (`tool_call_id`), plus the row's `tools` (the schemas offered) when it
has them; each conversation must pass the gate's rules (`shaping.data.messages`).
Tool calls in SFT: `to_sft` keeps a chat row's messages whole too, tool calls and `tool` messages
included, and its `tools`; the model's chat template renders them, and `shaping.training.sft.
check_tools_rendered` stops training where the template would drop them. `to_preferences`, `to_unpaired`
and `to_prompts` keep them in the prompt; `to_dspy_examples` reads text only (the last user message and
the final reply): a trajectory's calls and results are not in its examples.
`to_dspy_examples` reads flat rows (each field under its own key), chat rows (the last user message
before the final assistant reply is the one input field, that reply the output) and preference rows
(prompt, chosen); it needs the optional `dspy` extra, imported when called.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

from shaping.data.messages import validate_messages
from shaping.errors import ShapingError

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]


def _as_messages(value: Any, role: str, where: str) -> Messages:
    """A string becomes one message of `role`; a list of messages is kept as it is."""
    if isinstance(value, str) and value.strip():
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and _has_content(m) for m in value):
        return [dict(m) for m in value]
    raise ShapingError(f"{where}: expected a non-empty string or a list of messages, got {type(value).__name__}")


def _has_content(message: dict[str, Any]) -> bool:
    """A message has content, or is an assistant's tool call (whose content may be left out)."""
    return "content" in message or message.get("tool_calls") is not None


def _text(messages: Messages) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages).strip()


def has_tools(row: dict[str, Any]) -> bool:
    """Whether a chat row carries tool calls, tool messages or tools."""
    return bool(row.get("tools")) or any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in row.get("messages") or []
    )


def to_sft(rows: list[dict[str, Any]], source: str = "rows", without_tools: str | None = None) -> list[dict[str, Any]]:
    """Conversations to train on: a chat row's messages (tool calls and `tool` messages kept, with the row's
    `tools` when set); a preference row's prompt + chosen reply. `without_tools` (what the rows are for, and
    what to do instead): a row with tool calls is refused, naming it."""
    out: list[dict[str, Any]] = []
    for n, row in enumerate(rows, start=1):
        where = f"{source}:{n}"
        if without_tools is not None and has_tools(row):
            raise ShapingError(
                f"{where}: a conversation with tool calls; {without_tools}, or leave those rows out of dataset.sources"
            )
        if "messages" in row:
            item: dict[str, Any] = {"messages": _as_messages(row["messages"], "user", f"{where}: messages")}
            if row.get("tools") is not None:
                item["tools"] = row["tools"]
            out.append(item)
        elif "chosen" in row:
            prompt = _as_messages(row.get("prompt"), "user", f"{where}: prompt")
            out.append({"messages": prompt + _as_messages(row["chosen"], "assistant", f"{where}: chosen")})
        else:
            raise ShapingError(f"{where}: neither `messages` (chat row) nor `chosen` (preference row)")
    return out


def to_preferences(rows: list[dict[str, Any]], source: str = "rows", method: str = "dpo") -> list[dict[str, Messages]]:
    """Preference pairs in TRL's conversational format. Chat rows without a rejected reply and pairs
    whose two replies are the same text teach nothing and are dropped (logged); no pair at all is an
    error saying where pairs come from (and that train.method=`method` needs them)."""
    pairs = []
    identical = unpaired = 0
    for n, row in enumerate(rows, start=1):
        where = f"{source}:{n}"
        if "messages" in row:
            messages = _as_messages(row["messages"], "user", f"{where}: messages")
            if messages[-1].get("role") != "assistant":
                raise ShapingError(f"{where}: the last message must be the assistant's reply (the chosen one)")
            if row.get("rejected") is None:
                unpaired += 1
                continue
            pair = {
                "prompt": messages[:-1],
                "chosen": messages[-1:],
                "rejected": _as_messages(row["rejected"], "assistant", f"{where}: rejected"),
            }
        elif {"prompt", "chosen", "rejected"} <= set(row):
            pair = {
                "prompt": _as_messages(row["prompt"], "user", f"{where}: prompt"),
                "chosen": _as_messages(row["chosen"], "assistant", f"{where}: chosen"),
                "rejected": _as_messages(row["rejected"], "assistant", f"{where}: rejected"),
            }
        else:
            raise ShapingError(f"{where}: neither a chat row with `rejected` nor a {{prompt, chosen, rejected}} row")
        if _text(pair["chosen"]) == _text(pair["rejected"]):
            identical += 1
            continue
        pairs.append(pair)
    if unpaired:
        log.warning("%s: %d chat rows without a `rejected` reply left out", source, unpaired)
    if identical:
        log.warning("%s: %d pairs dropped whose chosen and rejected replies are the same text", source, identical)
    if not pairs:
        raise ShapingError(
            f"{source}: no preference pair to train on ({unpaired} rows without a `rejected` reply, {identical} "
            f"with two identical replies). train.method={method} needs chat rows with `rejected` "
            "(identity_distillation records the base model's reply there) or preference rows "
            "{prompt, chosen, rejected} (dataset.format=preference)"
        )
    return pairs


def to_unpaired(rows: list[dict[str, Any]], source: str = "rows", seed: int = 0) -> list[dict[str, Any]]:
    """KTO's unpaired rows in TRL's conversational format: each preference pair (to_preferences, same
    checks and errors) gives {prompt, completion: chosen, label: True} and {prompt, completion: rejected,
    label: False}. The rows are shuffled with `seed`: KTOTrainer reads them in order and estimates its KL
    term from each row's prompt with the previous row's completion in the same batch, so a pair's two
    rows side by side would give it the matched reply instead of an unrelated one, and unshuffled halves
    would give all-desirable and all-undesirable batches."""
    unpaired: list[dict[str, Any]] = []
    for pair in to_preferences(rows, source, method="kto"):
        unpaired.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        unpaired.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    random.Random(seed).shuffle(unpaired)
    return unpaired


def to_trajectories(rows: list[dict[str, Any]], source: str = "rows") -> list[dict[str, Any]]:
    """Multi-turn conversations kept whole, tool calls and tool results included (and `tools` when set);
    each checked by the gate's conversation rules (`shaping.data.messages.validate_messages`)."""
    out = []
    for n, row in enumerate(rows, start=1):
        where = f"{source}:{n}"
        if "messages" not in row:
            raise ShapingError(f"{where}: no `messages`: a trajectory is a chat row {{id, messages[, tools]}}")
        problems = validate_messages(row["messages"])
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ShapingError(f"{where}: {problems[0]}{more}")
        item: dict[str, Any] = {"messages": [dict(m) for m in row["messages"]]}
        if row.get("tools") is not None:
            if not isinstance(row["tools"], list):
                raise ShapingError(f"{where}: tools: expected a list of tool schemas")
            item["tools"] = row["tools"]
        out.append(item)
    return out


def to_prompts(rows: list[dict[str, Any]], source: str = "rows") -> list[dict[str, Any]]:
    """Prompts to sample replies to (train=grpo), in TRL's conversational format: a chat row's messages
    before its final assistant reply (a row without one is all prompt), a preference row's prompt; with
    `reference`, the row's own reply's text (the chosen one; "" without one), which TRL hands the rewards."""
    out = []
    for row in to_sft(rows, source):
        messages, reference = row["messages"], ""
        if messages[-1].get("role") == "assistant":
            messages, reference = messages[:-1], str(messages[-1].get("content") or "")
        if messages:
            out.append({"prompt": messages, "reference": reference})
    if not out:
        raise ShapingError(f"{source}: no prompt to sample replies to (every row is a lone assistant reply)")
    return out


DSPY_EXTRA = "pip install -e '.[dspy]'"


def import_dspy() -> Any:
    """The `dspy` module, offline: LiteLLM (which DSPy calls models through) reads its bundled model cost
    map instead of fetching one from GitHub when first imported, and DSPy turns LiteLLM's telemetry off.
    Missing: one error naming the extra."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import dspy
    except ImportError:
        raise ShapingError(f"DSPy is not installed; it is the optional `dspy` extra: {DSPY_EXTRA}") from None
    return dspy


def _field_value(row: dict[str, Any], field: str, role: str, where: str) -> Any:
    """A field of a flat row by its name; else a chat row's last user message before the final reply
    (role user) or that reply (role assistant); else a preference row's prompt or chosen reply."""
    if field in row:
        return row[field]
    if "messages" in row:
        messages = _as_messages(row["messages"], "user", f"{where}: messages")
        if role == "assistant":
            if messages[-1].get("role") != "assistant":
                raise ShapingError(f"{where}: messages: the last message must be the assistant's reply ({field})")
            return str(messages[-1].get("content", ""))
        users = [m for m in messages[:-1] if m.get("role") == "user"] or [
            m for m in messages if m.get("role") == "user"
        ]
        if not users:
            raise ShapingError(f"{where}: messages: no user message for the input field `{field}`")
        return str(users[-1].get("content", ""))
    if "chosen" in row:
        return _text(_as_messages(row["prompt" if role == "user" else "chosen"], role, f"{where}: {field}"))
    raise ShapingError(f"{where}: no `{field}` key, and not a chat row (messages) or a preference row (chosen)")


def to_dspy_examples(
    rows: list[dict[str, Any]],
    signature: Any,
    input_fields: list[str],
    output_field: str,
    source: str = "rows",
) -> list[Any]:
    """`dspy.Example`s for `signature` (a dspy.Signature or its string form, "prompt -> reply"), inputs marked
    (`with_inputs`). Chat and preference rows fill one input field; flat rows any number."""
    dspy = import_dspy()
    sig = dspy.Signature(signature) if isinstance(signature, str) else signature
    unknown = [f for f in input_fields if f not in sig.input_fields]
    if not input_fields or unknown:
        raise ShapingError(
            f"input_fields={list(input_fields)}: each must be an input field of the signature "
            f"({', '.join(sig.input_fields)})"
        )
    if output_field not in sig.output_fields:
        raise ShapingError(
            f"output_field={output_field!r}: not an output field of the signature ({', '.join(sig.output_fields)})"
        )
    out = []
    for n, row in enumerate(rows, start=1):
        where = f"{source}:{n}"
        if not isinstance(row, dict):
            raise ShapingError(f"{where}: expected an object, got {type(row).__name__}")
        flat = all(f in row for f in [*input_fields, output_field])
        if not flat and len(input_fields) > 1:
            missing = [f for f in [*input_fields, output_field] if f not in row]
            raise ShapingError(f"{where}: missing {', '.join(missing)} (several input fields need a flat row)")
        values = {f: _field_value(row, f, "user", where) for f in input_fields}
        values[output_field] = _field_value(row, output_field, "assistant", where)
        out.append(dspy.Example(**values).with_inputs(*input_fields))
    return out
