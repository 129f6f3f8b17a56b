"""A byte-level BPE tokenizer trained from scratch, with a ChatML chat template."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"  # separates pretraining documents; also the pad token
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # ends every turn; the eos token, so generation stops after a reply
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]

# ChatML. The {% generation %} block covers the assistant's reply *and* its <|im_end|>, so
# assistant-only loss trains the model to stop (TRL's return_assistant_tokens_mask uses it).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (any byte sequence encodes; no unknown token) on `texts`."""
    if vocab_size < 300:
        raise ValueError(f"model.tokenizer.vocab_size={vocab_size}: needs at least 300 (256 bytes + merges)")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=END_OF_TEXT, model_max_length=1 << 30
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
