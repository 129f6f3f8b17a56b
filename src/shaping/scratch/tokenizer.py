"""From-scratch tokenizers: byte-level BPE (HF `tokenizers`) and SentencePiece unigram/BPE.

Every method ends as a transformers `PreTrainedTokenizerFast` with the ChatML template, so
the LM, `prepare_base` and the fine-tuning stages load any of them with `AutoTokenizer`.
SentencePiece models are trained with the `sentencepiece` package and exported piece by
piece (scores, or merges derived from the piece ranks); `tokenizer.model` is kept beside.
"""

from __future__ import annotations

import io
import logging
import os
import statistics
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from shaping.config.schema import TokenizerConfig
from shaping.errors import ShapingError

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"  # separates pretraining documents; also the pad token
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # ends every turn; the eos token, so generation stops after a reply
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
METHODS = ("bpe", "sentencepiece_unigram", "sentencepiece_bpe")
NORMALIZATIONS = ("none", "nfc", "nfkc")
SPACE = "▁"  # SentencePiece's visible space

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


def _normalizer(lowercase: bool, unicode_normalization: str) -> normalizers.Normalizer | None:
    if unicode_normalization not in NORMALIZATIONS:
        raise ShapingError(f"tokenizer.unicode_normalization={unicode_normalization!r}: choose none, nfc or nfkc")
    steps: list[normalizers.Normalizer] = []
    if unicode_normalization == "nfc":
        steps.append(normalizers.NFC())
    elif unicode_normalization == "nfkc":
        steps.append(normalizers.NFKC())
    if lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps) if steps else None


def _set_threads(threads: int) -> None:
    # HF tokenizers reads its thread pool size from the environment, once, at first use;
    # the Makefile's TOKENIZERS_PARALLELISM=false (for forked DataLoaders) would make it serial.
    if threads != 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    if threads > 0:
        os.environ["RAYON_NUM_THREADS"] = str(threads)


def _wrap(backend: Tokenizer, unk_token: str | None = None) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=unk_token,
        model_max_length=1 << 30,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _check_specials(special_tokens: Sequence[str]) -> list[str]:
    missing = [t for t in SPECIAL_TOKENS if t not in special_tokens]
    if missing:
        raise ShapingError(
            f"tokenizer.special_tokens: missing {missing}; the ChatML template and the LM need {SPECIAL_TOKENS}"
        )
    return list(special_tokens)


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    *,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    lowercase: bool = False,
    unicode_normalization: str = "none",
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (any byte sequence encodes; no unknown token) on `texts`."""
    if vocab_size < 300:
        raise ShapingError(f"tokenizer.vocab_size={vocab_size}: needs at least 300 (256 bytes + merges)")
    specials = _check_specials(special_tokens)
    backend = Tokenizer(models.BPE())
    backend.normalizer = _normalizer(lowercase, unicode_normalization)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return _wrap(backend)


def _python_normalize(text: str, lowercase: bool, unicode_normalization: str) -> str:
    if unicode_normalization == "nfc":
        text = unicodedata.normalize("NFC", text)
    elif unicode_normalization == "nfkc":
        text = unicodedata.normalize("NFKC", text)
    return text.lower() if lowercase else text


def _bpe_merges(pieces: dict[str, int], mergeable: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that rebuild SentencePiece BPE pieces, in piece rank order (SP merges by score)."""
    found: list[tuple[int, int, int, str, str]] = []
    for piece in mergeable:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in pieces and right in pieces:
                found.append((pieces[piece], pieces[left], pieces[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def train_sentencepiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    *,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    lowercase: bool = False,
    unicode_normalization: str = "none",
    character_coverage: float = 0.9995,
    threads: int = 0,
    seed: int = 0,
) -> tuple[PreTrainedTokenizerFast, bytes]:
    """Train SentencePiece (`unigram` or `bpe`); returns the exported fast tokenizer and the .model bytes.

    Whitespace is kept as is (no collapsing, no dummy prefix) so decode(encode(x)) == x, and
    rare characters fall back to bytes, so nothing is unknown.
    """
    import sentencepiece as spm

    specials = _check_specials(special_tokens)
    _normalizer(lowercase, unicode_normalization)  # validates the option
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    normalized = (_python_normalize(t, lowercase, unicode_normalization) for t in texts)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t for t in normalized if t),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        user_defined_symbols=specials,
        byte_fallback=True,
        normalization_rule_name="identity",  # our normalizer runs in the exported tokenizer
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        max_sentence_length=1 << 16,
        hard_vocab_limit=False,  # a small corpus may not support vocab_size pieces: take what it has
        num_threads=threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    unk = sp.id_to_piece(sp.unk_id())
    backend: Tokenizer
    if model_type == "unigram":
        backend = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    else:
        ids = {piece: i for i, (piece, _) in enumerate(vocab)}
        normal = [p for i, (p, _) in enumerate(vocab) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
        backend = Tokenizer(models.BPE(ids, _bpe_merges(ids, normal), unk_token=unk, byte_fallback=True, fuse_unk=True))
    backend.normalizer = _normalizer(lowercase, unicode_normalization)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens(specials)
    return _wrap(backend, unk_token=unk), proto


@dataclass
class TrainedTokenizer:
    tokenizer: PreTrainedTokenizerFast
    sentencepiece_model: bytes | None  # the .model file, for SentencePiece methods
    seconds: float
    train_bytes: int


def train_tokenizer(cfg: TokenizerConfig, texts: Sequence[str], seed: int) -> TrainedTokenizer:
    """Train the tokenizer `cfg.method` names on `texts`, timed (for the manifest and the benchmark)."""
    if cfg.method not in METHODS:
        raise ShapingError(f"tokenizer.method={cfg.method!r}: choose one of {', '.join(METHODS)}")
    _set_threads(cfg.threads)
    t0 = time.perf_counter()
    proto = None
    if cfg.method == "bpe":
        tokenizer = train_bpe_tokenizer(
            texts,
            cfg.vocab_size,
            cfg.min_frequency,
            special_tokens=cfg.special_tokens,
            lowercase=cfg.lowercase,
            unicode_normalization=cfg.unicode_normalization,
        )
    else:
        tokenizer, proto = train_sentencepiece_tokenizer(
            texts,
            cfg.vocab_size,
            cfg.method.removeprefix("sentencepiece_"),
            special_tokens=cfg.special_tokens,
            lowercase=cfg.lowercase,
            unicode_normalization=cfg.unicode_normalization,
            character_coverage=cfg.character_coverage,
            threads=cfg.threads,
            seed=seed,
        )
    seconds = time.perf_counter() - t0
    size = sum(len(t.encode("utf-8")) for t in texts)
    log.info("%s tokenizer: %d tokens from %.2f MB in %.1fs", cfg.method, len(tokenizer), size / 1e6, seconds)
    return TrainedTokenizer(tokenizer, proto, seconds, size)


def save_tokenizer(trained: TrainedTokenizer, folder: Path) -> list[str]:
    """Write the tokenizer files into `folder`; returns their names."""
    trained.tokenizer.save_pretrained(folder)
    if trained.sentencepiece_model is not None:
        (folder / "tokenizer.model").write_bytes(trained.sentencepiece_model)
    return sorted(p.name for p in folder.iterdir())


def load_tokenizer_dir(folder: str | Path) -> PreTrainedTokenizerFast:
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ShapingError(f"{folder}: no tokenizer.json; run `dvc repro tokenizer` first")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    return tokenizer


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tokenizer_stats(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], train_chars: set[str] | None = None
) -> dict[str, float | int]:
    """How `tokenizer` does on held-out `texts` (one document each).

    coverage: share of held-out characters seen in training (`train_chars`); unknown_rate: share
    of tokens that are the unknown token; byte_fallback_rate: share that are SentencePiece byte
    pieces (<0x..>, a character it had no piece for); round_trip_rate: share of documents that
    decode back exactly (below 1 only with lowercase/NFKC normalisation).
    """
    if not texts:
        raise ShapingError("tokenizer stats: the holdout is empty; raise tokenizer.holdout_fraction")
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    tokens = sum(lengths)
    chars = sum(len(t) for t in texts)
    words = sum(len(t.split()) for t in texts)
    unk = tokenizer.unk_token_id
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    byte_ids = {i for i, piece in enumerate(vocab) if len(piece) == 6 and piece.startswith("<0x") and piece[-1] == ">"}
    unknown = sum(1 for ids in encoded for i in ids if unk is not None and i == unk)
    fallback = sum(1 for ids in encoded for i in ids if i in byte_ids)
    round_trips = sum(1 for text, ids in zip(texts, encoded, strict=True) if tokenizer.decode(ids) == text)
    covered = chars if train_chars is None else sum(1 for t in texts for c in t if c in train_chars)
    return {
        "vocab_size": len(tokenizer),
        "documents": len(texts),
        "characters": chars,
        "tokens": tokens,
        "coverage": round(covered / max(1, chars), 6),
        "unknown_rate": round(unknown / max(1, tokens), 6),
        "byte_fallback_rate": round(fallback / max(1, tokens), 6),
        "tokens_per_char": round(tokens / max(1, chars), 4),
        "tokens_per_word": round(tokens / max(1, words), 4),
        "round_trip_rate": round(round_trips / len(texts), 4),
        "seq_len_mean": round(statistics.fmean(lengths), 2),
        "seq_len_p50": _percentile(lengths, 0.5),
        "seq_len_p90": _percentile(lengths, 0.9),
        "seq_len_p99": _percentile(lengths, 0.99),
        "seq_len_max": max(lengths),
    }
