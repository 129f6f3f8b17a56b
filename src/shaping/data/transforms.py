"""Dataset transforms: validated rows -> what a TRL trainer reads.

    to_sft(rows)          {"messages": [...]}                            SFTTrainer (conversational)
    to_preferences(rows)  {"prompt": [...], "chosen": [...], "rejected": [...]}  DPOTrainer (conversational)

Both accept the two formats the validate stage writes: chat rows `{id, messages[, rejected]}` and
preference rows `{id, prompt, chosen, rejected}` (strings or lists of messages). A chat row becomes
a preference pair when it carries `rejected`: the reply to prefer less than its final assistant
message (identity_distillation stores the base model's reply without the identity there).
"""

from __future__ import annotations

import logging
from typing import Any

from shaping.errors import ShapingError

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]


def _as_messages(value: Any, role: str, where: str) -> Messages:
    """A string becomes one message of `role`; a list of messages is kept as it is."""
    if isinstance(value, str) and value.strip():
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return [dict(m) for m in value]
    raise ShapingError(f"{where}: expected a non-empty string or a list of messages, got {type(value).__name__}")


def _text(messages: Messages) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages).strip()


def to_sft(rows: list[dict[str, Any]], source: str = "rows") -> list[dict[str, Messages]]:
    """Conversations to train on: a chat row's messages; a preference row's prompt + chosen reply."""
    out = []
    for n, row in enumerate(rows, start=1):
        where = f"{source}:{n}"
        if "messages" in row:
            out.append({"messages": _as_messages(row["messages"], "user", f"{where}: messages")})
        elif "chosen" in row:
            prompt = _as_messages(row.get("prompt"), "user", f"{where}: prompt")
            out.append({"messages": prompt + _as_messages(row["chosen"], "assistant", f"{where}: chosen")})
        else:
            raise ShapingError(f"{where}: neither `messages` (chat row) nor `chosen` (preference row)")
    return out


def to_preferences(rows: list[dict[str, Any]], source: str = "rows") -> list[dict[str, Messages]]:
    """Preference pairs in TRL's conversational format. Chat rows without a rejected reply and pairs
    whose two replies are the same text teach nothing and are dropped (logged); no pair at all is an
    error saying where pairs come from."""
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
            "with two identical replies). train.method=dpo needs chat rows with `rejected` (identity_distillation "
            "records the base model's reply there) or preference rows {prompt, chosen, rejected} "
            "(dataset.format=preference)"
        )
    return pairs
