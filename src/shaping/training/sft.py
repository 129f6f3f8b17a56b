"""SFT data as the trainer sees it: the training chat template, which tokens carry loss and how much.

TRL's SFTTrainer tokenizes conversations itself (apply_chat_template with the assistant mask).
This module does the same tokenization where TRL's cannot serve: token-level loss weights
(`train.loss_weights`) and padding-free batches without packing (TRL then needs the rows already
truncated); and it checks, for every path, that each reply ends on a stop token that carries loss,
so the tuned model learns to stop.

    weights = compile_loss_weights(cfg.train.loss_weights)
    row = tokenize_conversation(tokenizer, messages, template, train_on_prompt=False,
                                max_length=1024, weights=weights)
    # {"input_ids": [...], "labels": [... -100 outside replies ...], "loss_weights": [...]}
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from trl.chat_template_utils import get_training_chat_template, has_generation_markers
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling, SFTTrainer

from shaping.config.schema import LossWeight
from shaping.errors import ShapingError

log = logging.getLogger(__name__)

IGNORE = -100  # label of a token that carries no loss (transformers' convention)
STOP_CHECK_ROWS = 64  # rows checked for a learned stop token: a template property, so a sample shows it


def training_template(tokenizer: PreTrainedTokenizerBase, train_on_prompt: bool, name: str) -> str | None:
    """The chat template to tokenize training rows with: None = the tokenizer's own. Loss on replies
    only needs `{% generation %}` markers; TRL ships marked versions of common templates (Qwen,
    Llama 3, Gemma, Phi, ...) and this swaps one in; any other template fails here, saying how to fix it."""
    if train_on_prompt or has_generation_markers(tokenizer.chat_template):
        return None
    try:
        template = str(get_training_chat_template(tokenizer))
    except ValueError:
        raise ShapingError(
            f"model {name}: its chat template has no {{% generation %}} markers and TRL has no training "
            "version of it, so the loss cannot be limited to the assistant's replies. Either set "
            "train.train_on_prompt=true (loss on every token, prompts included), or edit the tokenizer's chat "
            "template (chat_template.jinja or tokenizer_config.json in a local copy of the model, then "
            "model.name_or_path=<that folder>) so that each assistant turn, reply and end-of-turn token, sits "
            "inside {% generation %}...{% endgeneration %}"
        ) from None
    log.info("model %s: training with TRL's marked version of its chat template (loss on replies only)", name)
    return template


def compile_loss_weights(rules: list[LossWeight]) -> list[tuple[re.Pattern[str], float]]:
    compiled = []
    for n, rule in enumerate(rules):
        try:
            pattern = re.compile(rule.pattern)
        except re.error as err:
            raise ShapingError(f"train.loss_weights[{n}].pattern={rule.pattern!r}: not a regex ({err})") from None
        if rule.weight < 0:
            raise ShapingError(f"train.loss_weights[{n}].weight={rule.weight}: must be >= 0 (0 masks the span)")
        compiled.append((pattern, float(rule.weight)))
    return compiled


def _reply_spans(text: str, messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(offset in the rendered text, content) of each assistant reply, found in order."""
    spans, cursor = [], 0
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or not content:
            continue
        at = text.find(content, cursor)
        if at < 0:
            continue  # a template that rewrites content (e.g. strips thinking) renders it elsewhere
        cursor = at + len(content)
        if message.get("role") == "assistant":
            spans.append((at, content))
    return spans


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    template: str | None,
    train_on_prompt: bool,
    max_length: int | None,
    weights: list[tuple[re.Pattern[str], float]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, list[Any]]:
    """input_ids and labels exactly as TRL's SFTTrainer builds them (same apply_chat_template call), cut
    to max_length; with `weights`, also a per-token `loss_weights` (1.0, or the last matching rule's
    weight for tokens overlapping a match in an assistant reply; 0 where the label is ignored)."""
    kwargs: dict[str, Any] = {} if template is None else {"chat_template": template}
    if tools:
        kwargs["tools"] = tools
    out: Any = tokenizer.apply_chat_template(  # a BatchEncoding with return_dict=True
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=not train_on_prompt,
        tokenizer_kwargs={"return_offsets_mapping": True} if weights else {},
        **kwargs,
    )
    ids: list[int] = list(out["input_ids"])
    mask = [1] * len(ids) if train_on_prompt else list(out["assistant_masks"])
    labels = [token if keep else IGNORE for token, keep in zip(ids, mask, strict=True)]
    row: dict[str, list[Any]] = {"input_ids": ids, "labels": labels}
    if weights:
        text = str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))
        offsets = out["offset_mapping"]
        per_token = [1.0] * len(ids)
        for start, content in _reply_spans(text, messages):
            for pattern, weight in weights:
                for match in pattern.finditer(content):
                    a, b = start + match.start(), start + match.end()
                    for i, (s, e) in enumerate(offsets):
                        if s < b and e > a:  # the token overlaps the matched text
                            per_token[i] = weight
        for i, weight in enumerate(per_token):
            if weight == 0 or labels[i] == IGNORE:
                per_token[i], labels[i] = 0.0, IGNORE  # weight 0 is masking: the token leaves the mean too
        row["loss_weights"] = per_token
    if max_length is not None:
        row = {key: values[:max_length] for key, values in row.items()}
    return row


def check_tools_rendered(
    tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], template: str | None, name: str, source: str
) -> None:
    """Rows with tool calls, `tool` messages or `tools` train only through a chat template that renders them:
    the text must change when a row's tool calls or its tools are taken away, and hold each tool result. A
    template without tool support (the demo's ChatML renders content only) would drop them silently, or
    fail on a call's null content: either is one error naming the row and what to do."""
    kwargs: dict[str, Any] = {} if template is None else {"chat_template": template}

    def render(messages: list[dict[str, Any]], tools: Any) -> tuple[str | None, str]:
        """(the text, "") or (None, the template's error)."""
        try:
            return str(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)), ""
        except Exception as err:  # jinja's errors, e.g. `None + '<|im_end|>'` on a call's null content
            return None, f"{type(err).__name__}: {err}"

    checked = 0
    for n, row in enumerate(rows, start=1):
        messages, tools = row["messages"], row.get("tools") or None
        calls = any(m.get("tool_calls") for m in messages)
        results = [str(m.get("content") or "") for m in messages if m.get("role") == "tool"]
        if not calls and not results and not tools:
            continue
        text, error = render(messages, tools)
        lost = []
        if text is None:
            lost.append(f"fails on it ({error})")
        else:
            if calls:
                bare = [
                    {**{k: v for k, v in m.items() if k != "tool_calls"}, "content": m.get("content") or ""}
                    for m in messages
                ]
                if render(bare, tools)[0] == text:
                    lost.append("leaves out its tool calls")
            if tools and render(messages, None)[0] == text:
                lost.append("leaves out its tools")
            if any(r not in text for r in results):
                lost.append("leaves out its tool results")
        if lost:
            raise ShapingError(
                f"{source}:{n}: model {name}: its chat template {' and '.join(lost)}, so training on this row would "
                "lose its tool calls. Train a model whose chat template renders tool_calls, tool messages and "
                "tools (Qwen2.5's does), or leave the rows with tool calls out of dataset.sources"
            )
        checked += 1
        if checked >= STOP_CHECK_ROWS:  # a template property, so a sample shows it
            return


def check_stop_token_learned(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, Any]]],
    template: str | None,
    train_on_prompt: bool,
    max_length: int | None,
) -> None:
    """Every checked row's last token with loss (trailing whitespace aside) must be a stop token
    (EOS or another special token such as <|im_end|>), or the tuned model never learns to stop."""
    stop_ids = {tokenizer.eos_token_id, *tokenizer.all_special_ids} - {None}
    cut = 0
    for messages in conversations[:STOP_CHECK_ROWS]:
        full = tokenize_conversation(tokenizer, messages, template, train_on_prompt, None)
        if max_length is not None and len(full["input_ids"]) > max_length:
            cut += 1  # its end is cut off: nothing to check
            continue
        trained = [t for t in full["labels"] if t != IGNORE and str(tokenizer.decode([t])).strip()]
        if not trained or trained[-1] not in stop_ids:
            last = tokenizer.decode(trained[-1:]) if trained else "nothing"
            raise ShapingError(
                f"the training rows end on {last!r}, not on a stop token carrying loss "
                f"({tokenizer.eos_token!r}), so the tuned model would never learn to stop. Put the end-of-turn "
                "token inside the chat template's {% generation %} block (in a local copy of the tokenizer), or "
                "set train.train_on_prompt=true"
            )
    if cut:
        log.warning(
            "%d of %d rows checked are longer than train.max_length: cut, they never show the stop",
            cut,
            min(len(conversations), STOP_CHECK_ROWS),
        )


@dataclass
class WeightedCollator(DataCollatorForLanguageModeling):
    """TRL's padding collator, plus the per-token loss weights padded with 0."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [torch.tensor(e["loss_weights"], dtype=torch.float32) for e in examples]
        batch = super().torch_call([{k: v for k, v in e.items() if k != "loss_weights"} for e in examples])
        width = batch["input_ids"].shape[1]
        batch["loss_weights"] = torch.stack([torch.nn.functional.pad(w, (0, width - len(w))) for w in weights])
        return batch


class WeightedSFTTrainer(SFTTrainer):
    """SFT whose loss counts each token `loss_weights` times: sum(w * -log p) / (tokens with w > 0).

    Tokens of weight 0 leave the numerator and the denominator (exactly masking them); a span of
    weight 2 adds its loss twice. The denominator is the Trainer's token count over the whole
    accumulated batch (`num_items_in_batch`), as in TRL's own loss, so gradient accumulation and
    several processes weigh tokens the same way."""

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and "loss_weights" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "loss_weights"]

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        mode = "train" if self.model is not None and self.model.training else "eval"
        weights = inputs.pop("loss_weights")
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)  # per-token log-probs of the next-token labels
        per_token = -outputs.log_probs * weights[:, 1:].to(outputs.log_probs.dtype)  # (B, T-1), labels shifted
        count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        if mode == "train":
            seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(torch.as_tensor(seen)).sum().item())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss
