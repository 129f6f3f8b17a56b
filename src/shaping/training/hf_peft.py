"""The hf_peft training backend: TRL's SFTTrainer, DPOTrainer, KTOTrainer, GRPOTrainer, ORPOTrainer or GKDTrainer
(train=distill) with a PEFT adapter (LoRA, DoRA, QLoRA) or a full fine-tune (lora=none).

    train.method=sft   loss on the assistant replies and their end-of-turn token (train.train_on_prompt=true:
                       every token); train.loss_weights weigh regex spans; train.packing / train.padding_free
    train.method=dpo   preference pairs (shaping.data.transforms.to_preferences); with an adapter the
                       reference model is the base with the adapter disabled, so no second copy in memory
    train.method=kto   unpaired rows (shaping.data.transforms.to_unpaired): each pair's chosen reply is
                       desirable, its rejected reply undesirable; the reference as for dpo
    train.method=grpo  TRL's GRPOTrainer on the rows' prompts (shaping.data.transforms.to_prompts): replies
                       sampled by the model, scored by train.rewards (shaping.training.rewards)
    train.method=orpo  trl.experimental.orpo's ORPOTrainer on the preference pairs, no reference model
    train.method=distill  on-policy context distillation (shaping.training.distill): the student samples replies
                       without the identity prompt and learns the teacher's token distribution on them
    lora=qlora         the frozen base in 4 bits (bitsandbytes NF4), prepared for k-bit training
    train.merge=true   also the adapter merged into the base's weights, in <output_dir>/merged
    train.eval_steps   the loss on the eval rows (the validated eval split, built like the training
                       rows) every N steps, to DVCLive; train.early_stopping_patience stops after N
                       evaluations without a lower eval loss; train.keep_best saves the checkpoint with
                       the lowest eval loss as the adapter

`train(cfg, rows, output_dir, live_dir, checkpoint_dir, eval_rows)` is the backend protocol the train stage calls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from transformers import EarlyStoppingCallback, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.integrations import DVCLiveCallback
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from shaping.config.schema import Config
from shaping.data.transforms import to_preferences, to_sft, to_unpaired
from shaping.device import (
    resolve_device,
    resolve_gradient_checkpointing,
    resolve_precision,
    torch_dtype,
)
from shaping.errors import ShapingError
from shaping.hub import compute_dtype, load_base_model, load_tokenizer, quantization_config
from shaping.training.checkpointing import DVCLiveResume, RunStart, checkpoint_args, resume_checkpoint
from shaping.training.export import merge_adapter
from shaping.training.failures import StopOnNonFiniteLoss, out_of_memory_message
from shaping.training.knobs import check_sampling_knobs
from shaping.training.launch import RankReport
from shaping.training.rewards import build_rewards
from shaping.training.sft import (
    WeightedCollator,
    WeightedSFTTrainer,
    check_stop_token_learned,
    check_tools_rendered,
    compile_loss_weights,
    tokenize_conversation,
    training_template,
)

log = logging.getLogger(__name__)
METHODS = ("sft", "dpo", "kto", "grpo", "orpo", "distill")
PREFERENCE_METHODS = ("dpo", "kto")  # trained on pairs, against a reference model
KTO_LOSSES = ("kto", "apo_zero_unpaired")  # TRL KTOConfig.loss_type
LORA_BIAS = ("none", "all", "lora_only")


@dataclass
class TrainingReport:
    checkpoint_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    backend: str = "hf_peft"


class GuardedSFTTrainer(StopOnNonFiniteLoss, SFTTrainer):
    pass


class GuardedWeightedSFTTrainer(StopOnNonFiniteLoss, WeightedSFTTrainer):
    pass


class GuardedDPOTrainer(StopOnNonFiniteLoss, DPOTrainer):
    pass


class GuardedKTOTrainer(StopOnNonFiniteLoss, KTOTrainer):
    pass


def adapter_kind(cfg: Config) -> str:
    if not cfg.lora.enabled:
        return "full"
    if cfg.lora.quantization is not None:
        return "qlora"
    return "dora" if cfg.lora.dora else "lora"


def check_options(cfg: Config) -> None:
    """Combinations that cannot work fail here, before any model is loaded, naming the keys."""
    t = cfg.train
    if t.method not in METHODS:
        raise ShapingError(f"train.method={t.method!r}: choose one of {', '.join(METHODS)}")
    if t.loss_weights and t.method != "sft":
        raise ShapingError("train.loss_weights: token weights apply to the SFT loss only (train=sft)")
    if t.loss_weights and (t.packing or t.padding_free):
        raise ShapingError(
            "train.loss_weights needs padded batches: set train.packing=false and train.padding_free=false"
        )
    if t.method == "distill" and (t.packing or t.padding_free):
        raise ShapingError("train.packing / train.padding_free: train=distill pads its batches; set both false")
    if t.method != "sft" and (t.packing or t.padding_free):
        trainer = {"dpo": "DPOTrainer", "kto": "KTOTrainer", "grpo": "GRPOTrainer", "orpo": "ORPOTrainer"}[t.method]
        raise ShapingError(f"train.packing / train.padding_free: TRL's {trainer} pads its batches; set both false")
    if t.method == "kto" and t.loss_type not in KTO_LOSSES:
        raise ShapingError(
            f"train.loss_type={t.loss_type!r}: train.method=kto takes {' or '.join(KTO_LOSSES)} (TRL KTOConfig); "
            "use train=kto, whose conf/train/kto.yaml sets loss_type: kto"
        )
    if t.method == "kto" and t.loss_type != "apo_zero_unpaired" and t.batch_size < 2:
        raise ShapingError(
            f"train.batch_size={t.batch_size}: train=kto estimates its KL term from the other replies in each "
            "batch, so it needs train.batch_size >= 2 (lower train.gradient_accumulation_steps to keep the "
            "effective batch)"
        )
    if t.method == "grpo":
        check_grpo_options(cfg)
    if cfg.lora.quantization is not None and not cfg.lora.enabled:
        raise ShapingError("lora.quantization needs an adapter (QLoRA): a 4-bit base cannot be fully fine-tuned")
    if t.merge and not cfg.lora.enabled:
        raise ShapingError("train.merge=true: lora=none saves the full model already; there is no adapter to merge")
    check_eval_options(cfg)


def check_eval_options(cfg: Config) -> None:
    """Evaluation while training: the keys that need train.eval_steps > 0, and keep_best's saving."""
    t = cfg.train
    for key in ("eval_steps", "early_stopping_patience"):
        if getattr(t, key) < 0:
            raise ShapingError(f"train.{key}={getattr(t, key)}: must be 0 (off) or more")
    if t.eval_steps == 0:
        if t.early_stopping_patience > 0:
            raise ShapingError(
                f"train.early_stopping_patience={t.early_stopping_patience} counts evaluations, and "
                "train.eval_steps=0 evaluates never: set train.eval_steps > 0 (e.g. train.eval_steps=10)"
            )
        if t.keep_best:
            raise ShapingError(
                "train.keep_best=true picks the checkpoint with the lowest eval loss, and train.eval_steps=0 "
                "evaluates never: set train.eval_steps > 0 and train.save_steps to the same value"
            )
    if t.keep_best and t.save_steps != t.eval_steps:
        # transformers records a best step whether or not it was saved: only a checkpoint at every
        # evaluation makes the kept one the lowest eval loss of them all
        raise ShapingError(
            f"train.keep_best=true keeps a saved checkpoint, so it needs one at every evaluation: set "
            f"train.save_steps={t.eval_steps} (train.eval_steps), not {t.save_steps}"
        )


def best_metric_args(cfg: Config) -> dict[str, Any]:
    """TrainingArguments for evaluating every train.eval_steps and tracking the lowest eval loss."""
    t = cfg.train
    if t.eval_steps == 0:
        return {"eval_strategy": "no"}
    tracking = t.keep_best or t.early_stopping_patience > 0
    return {
        "eval_strategy": "steps",
        "eval_steps": t.eval_steps,
        "per_device_eval_batch_size": t.batch_size,  # kto estimates its KL term within a batch, as in training
        "prediction_loss_only": True,  # the loss only: no logits gathered over the whole eval split
        "metric_for_best_model": "eval_loss" if tracking else None,
        "greater_is_better": False if tracking else None,
        "load_best_model_at_end": t.keep_best,
        # a resumed run continues early stopping's count of evaluations without improvement (trainer_state.json)
        "restore_callback_states_from_checkpoint": t.early_stopping_patience > 0,
    }


def peft_config(cfg: Config) -> PeftLoraConfig | None:
    lora = cfg.lora
    if not lora.enabled:
        return None
    if lora.bias not in LORA_BIAS:
        raise ShapingError(f"lora.bias={lora.bias!r}: choose one of {', '.join(LORA_BIAS)}")
    bias = cast(Literal["none", "all", "lora_only"], lora.bias)
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.dora,
        bias=bias,
        task_type="CAUSAL_LM",
    )


def load_model(cfg: Config, device: str, precision: str, checkpointing: bool) -> PreTrainedModel:
    # fp32 master weights on CPU; on GPU load in the training dtype (autocast handles the rest)
    dtype = torch_dtype(precision) if device == "cuda" else torch_dtype("fp32")
    bnb = quantization_config(cfg.lora.quantization, compute_dtype(cfg.lora.quantization, precision))
    if bnb is None:
        return load_base_model(cfg.model, dtype)
    from peft import prepare_model_for_kbit_training

    model = load_base_model(cfg.model, dtype, quantization_config=bnb)
    # norms and embeddings to fp32 for stable k-bit training, input grads for gradient checkpointing
    return cast(PreTrainedModel, prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing))


def common_args(
    cfg: Config, saving: dict[str, Any], precision: str, checkpointing: bool, device: str
) -> dict[str, Any]:
    """The TrainingArguments both trainers share."""
    t = cfg.train
    return {
        **saving,  # output_dir and checkpoints (shaping.training.checkpointing)
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        # transformers>=5 (the floor) reads a float < 1 as a fraction of the total steps; 4.x read it as 0 steps
        "warmup_steps": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "bf16": precision == "bf16",  # explicit both ways: DPOConfig defaults bf16 to True
        "fp16": precision == "fp16",  # fp16: the Trainer scales the loss with a GradScaler
        "gradient_checkpointing": checkpointing,
        "logging_steps": t.logging_steps,
        "logging_nan_inf_filter": False,  # a NaN loss must surface (StopOnNonFiniteLoss), not be averaged away
        # the Trainer's token count is saved in checkpoints and continues on resume (TRL's num_tokens restarts at 0)
        "include_num_input_tokens_seen": "non_padding",
        "use_liger_kernel": t.liger,
        **best_metric_args(cfg),
        "report_to": "none",  # DVCLive is attached as a callback with our own Live
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "use_cpu": device == "cpu",
        "dataloader_num_workers": 0,
    }


def sft_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    eval_rows: list[dict[str, Any]] | None = None,
) -> SFTTrainer:
    t = cfg.train
    sft_rows = to_sft(rows, "train.jsonl")
    conversations = [row["messages"] for row in sft_rows]
    template = training_template(tokenizer, t.train_on_prompt, cfg.model.name_or_path)
    check_tools_rendered(tokenizer, sft_rows, template, cfg.model.name_or_path, "train.jsonl")
    check_stop_token_learned(tokenizer, conversations, template, t.train_on_prompt, t.max_length)
    weights = compile_loss_weights(t.loss_weights)
    # TRL tokenizes conversations itself, except where it cannot: per-token weights, and padding-free
    # batches without packing (TRL then wants rows cut to max_length already)
    pretokenized = bool(weights) or (t.padding_free and not t.packing)

    def dataset_of(items: list[dict[str, Any]]) -> Dataset:
        if pretokenized:
            return Dataset.from_list(
                [
                    tokenize_conversation(
                        tokenizer, r["messages"], template, t.train_on_prompt, t.max_length, weights, r.get("tools")
                    )
                    for r in items
                ]
            )
        if any("tools" in r for r in items):  # TRL renders a `tools` column (a JSON string: schemas vary)
            return Dataset.from_list([{"messages": r["messages"], "tools": json.dumps(r.get("tools"))} for r in items])
        return Dataset.from_list([{"messages": r["messages"]} for r in items])

    dataset = dataset_of(sft_rows)
    eval_dataset = None
    if eval_rows is not None:
        eval_sft = to_sft(eval_rows, "eval.jsonl")
        check_tools_rendered(tokenizer, eval_sft, template, cfg.model.name_or_path, "eval.jsonl")
        eval_dataset = dataset_of(eval_sft)
    config = SFTConfig(
        **args,
        max_length=None if pretokenized else t.max_length,
        assistant_only_loss=not t.train_on_prompt and not pretokenized,
        packing=t.packing,
        padding_free=t.padding_free,
    )
    trainer_class = GuardedWeightedSFTTrainer if weights else GuardedSFTTrainer
    return trainer_class(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        data_collator=WeightedCollator(pad_token_id=int(tokenizer.pad_token_id)) if weights else None,
        callbacks=callbacks,
    )


def preference_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    config_class: Callable[..., DPOConfig | KTOConfig],
    trainer_class: Callable[..., DPOTrainer | KTOTrainer],
    eval_dataset: Dataset | None = None,
    **method_args: Any,
) -> DPOTrainer | KTOTrainer:
    """A trainer against a reference model (dpo, kto). ref_model=None: with an adapter TRL scores the
    reference with the adapter disabled (same weights, no copy); a full fine-tune gets a frozen copy,
    unless the log-probs are precomputed."""
    t = cfg.train
    try:
        config = config_class(
            **args,
            max_length=t.max_length,
            beta=t.beta,
            precompute_ref_log_probs=t.precompute_ref_log_probs,
            **method_args,
        )
    except ValueError as err:
        raise ShapingError(f"train (method={t.method}): {err}") from None
    return trainer_class(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=callbacks,
    )


def dpo_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    eval_rows: list[dict[str, Any]] | None = None,
) -> DPOTrainer:
    dataset = Dataset.from_list(to_preferences(rows, "train.jsonl"))
    eval_dataset = None if eval_rows is None else Dataset.from_list(to_preferences(eval_rows, "eval.jsonl"))
    trainer = preference_trainer(
        cfg,
        model,
        tokenizer,
        dataset,
        args,
        callbacks,
        DPOConfig,
        GuardedDPOTrainer,
        eval_dataset,
        loss_type=[cfg.train.loss_type],
    )
    return cast(DPOTrainer, trainer)


def kto_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    eval_rows: list[dict[str, Any]] | None = None,
) -> KTOTrainer:
    t = cfg.train
    dataset = Dataset.from_list(to_unpaired(rows, "train.jsonl", seed=cfg.seed))
    eval_dataset = None if eval_rows is None else Dataset.from_list(to_unpaired(eval_rows, "eval.jsonl", seed=cfg.seed))
    trainer = preference_trainer(
        cfg,
        model,
        tokenizer,
        dataset,
        args,
        callbacks,
        KTOConfig,
        GuardedKTOTrainer,
        eval_dataset,
        loss_type=t.loss_type,
        desirable_weight=t.desirable_weight,
        undesirable_weight=t.undesirable_weight,
    )
    return cast(KTOTrainer, trainer)


def check_grpo_options(cfg: Config) -> None:
    t = cfg.train
    if t.num_generations < 2:
        raise ShapingError(
            f"train.num_generations={t.num_generations}: GRPO compares each reply with the others sampled for "
            "the same prompt; use at least 2"
        )
    if (t.batch_size * t.gradient_accumulation_steps) % t.num_generations:
        raise ShapingError(
            f"train.batch_size={t.batch_size} x train.gradient_accumulation_steps={t.gradient_accumulation_steps}: "
            f"must be a multiple of train.num_generations={t.num_generations} (each prompt's replies are sampled "
            "together)"
        )
    check_sampling_knobs(t, "train=grpo")
    # every reward's name, arguments and module, before any model loads (built again with the tokenizer's ids)
    build_rewards(t.rewards, eos_token_ids=[-1], cfg=cfg)


def check_vllm(device: str) -> None:
    """train.vllm=true: TRL samples with vLLM in this process (colocate mode), which needs a CUDA GPU and vllm."""
    import importlib.util

    if device != "cuda":
        raise ShapingError(
            f"train.vllm=true: vLLM generation needs a CUDA GPU (training on {device}); set train.vllm=false"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ShapingError(
            "train.vllm=true: vllm is not installed; pip install 'shaping[vllm]', or set train.vllm=false"
        )


def grpo_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    eval_rows: list[dict[str, Any]] | None = None,
) -> Any:
    """TRL's GRPOTrainer: `num_generations` replies sampled per prompt (transformers' generate, or vLLM with
    train.vllm), scored by train.rewards; beta > 0 adds a KL term to the reference (with an adapter: the
    base with the adapter disabled)."""
    from trl import GRPOConfig, GRPOTrainer

    from shaping.data.transforms import to_prompts

    class GuardedGRPOTrainer(StopOnNonFiniteLoss, GRPOTrainer):
        pass

    t = cfg.train
    if eval_rows is not None:
        raise ShapingError(
            "train.eval_steps: GRPO has no held-out loss to evaluate (its loss depends on the sampled replies); "
            "set train.eval_steps=0 with train=grpo and compare runs with the evaluate stage"
        )
    gen_eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos_ids = [tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])]
    rewards, weights = build_rewards(t.rewards, [int(i) for i in eos_ids if i is not None], cfg=cfg)

    class CloseRewards(TrainerCallback):
        """The judge's and teacher's models (and their worker threads) go when training ends."""

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for reward in rewards:
                reward.close()

    dataset = Dataset.from_list(to_prompts(rows, "train.jsonl"))
    per_step = t.batch_size * t.gradient_accumulation_steps // t.num_generations
    if len(dataset) < per_step:
        raise ShapingError(
            f"train.jsonl: {len(dataset)} prompts, fewer than one step samples for (train.batch_size="
            f"{t.batch_size} x train.gradient_accumulation_steps={t.gradient_accumulation_steps} / "
            f"train.num_generations={t.num_generations} = {per_step}): lower train.batch_size or add rows"
        )
    try:
        config = GRPOConfig(
            **args,
            num_generations=t.num_generations,
            max_completion_length=t.max_completion_length,
            temperature=t.temperature,
            beta=t.beta,
            loss_type=t.loss_type,
            reward_weights=weights,
            use_vllm=t.vllm,
            vllm_mode="colocate",
        )
    except ValueError as err:
        raise ShapingError(f"train (method=grpo): {err}") from None
    return GuardedGRPOTrainer(
        model=model,
        reward_funcs=cast(list[Any], rewards),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=[*callbacks, CloseRewards()],
    )


def orpo_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    eval_rows: list[dict[str, Any]] | None = None,
) -> Any:
    """trl.experimental.orpo's ORPOTrainer (experimental upstream: its API may change between TRL releases;
    the lock pins it): the SFT loss on the chosen reply plus beta times the log odds ratio of chosen over
    rejected. No reference model."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class GuardedORPOTrainer(StopOnNonFiniteLoss, ORPOTrainer):
        def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
            """The Trainer counts `input_ids`, which ORPO's batches lack (it would count 0): the model reads
            each pair's chosen and rejected sequences, prompt included, so their tokens are the ones seen."""
            if self.args.include_num_input_tokens_seen == "no":
                return
            seen = sum(inputs[f"{side}_attention_mask"].sum() for side in ("chosen", "rejected"))
            seen = torch.as_tensor(seen, device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(seen).sum().item())

    t = cfg.train
    dataset = Dataset.from_list(to_preferences(rows, "train.jsonl", method="orpo"))
    eval_pairs = None if eval_rows is None else to_preferences(eval_rows, "eval.jsonl", method="orpo")
    eval_dataset = None if eval_pairs is None else Dataset.from_list(eval_pairs)
    try:
        config = ORPOConfig(**args, max_length=t.max_length, beta=t.beta)
    except ValueError as err:
        raise ShapingError(f"train (method=orpo): {err}") from None
    return GuardedORPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=callbacks,
    )


def distill_trainer(
    cfg: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    args: dict[str, Any],
    callbacks: list[TrainerCallback],
    eval_rows: list[dict[str, Any]] | None = None,
) -> SFTTrainer:
    from shaping.training import distill

    if eval_rows is not None:
        raise ShapingError(
            "train.eval_steps: train=distill samples its own replies, so it has no held-out loss to evaluate; "
            "set train.eval_steps=0 and compare runs with the evaluate stage"
        )
    system, _ = distill.teacher_system_prompt(cfg)
    teacher = distill.load_teacher(cfg, next(model.parameters()).dtype)
    return distill.distill_trainer(cfg, model, tokenizer, rows, args, callbacks, peft_config(cfg), system, teacher)


# what the run record keeps of TRL's last logged rewards (KTO's pairs are split, so it has no accuracy)
REWARD_METRICS = {
    "dpo": (("rewards/accuracies", "reward_accuracy"), ("rewards/margins", "reward_margin")),
    "kto": (
        ("rewards/margins", "reward_margin"),
        ("rewards/chosen", "reward_chosen"),
        ("rewards/rejected", "reward_rejected"),
        ("kl", "kl"),
    ),
    "grpo": (("reward", "reward"), ("reward_std", "reward_std")),  # and each reward's mean: grpo_reward_metrics
    "orpo": (
        ("rewards/accuracies", "reward_accuracy"),
        ("rewards/margins", "reward_margin"),
        ("log_odds_ratio", "log_odds_ratio"),
        ("log_odds_chosen", "log_odds_chosen"),
        ("nll_loss", "nll_loss"),
    ),
    "distill": (("reverse_kl", "reverse_kl"),),
}


def eval_metrics(cfg: Config, trainer: Any) -> dict[str, Any]:
    """What the run record keeps of the evaluations while training: the last and the lowest eval loss, their
    count, whether early stopping ended the run, and (keep_best) which checkpoint became the adapter."""
    t, state = cfg.train, trainer.state
    if t.eval_steps == 0:
        return {}
    curve = [(int(e["step"]), float(e["eval_loss"])) for e in state.log_history if "eval_loss" in e]
    out: dict[str, Any] = {"evaluations": len(curve)}
    if curve:
        best_step, best_loss = min(curve, key=lambda point: point[1])  # the first of equal losses, as transformers
        out |= {"eval_loss": round(curve[-1][1], 6), "best_eval_loss": round(best_loss, 6), "best_step": best_step}
    if t.early_stopping_patience > 0:
        out["stopped_early"] = state.global_step < state.max_steps
    if t.keep_best:
        kept = state.best_model_checkpoint
        out["kept_step"] = int(kept.rsplit("-", 1)[1]) if kept else state.global_step
    return out


def last_logged(trainer: Any, key: str) -> float | None:
    return next((float(e[key]) for e in reversed(trainer.state.log_history) if key in e), None)


def first_logged(trainer: Any, key: str) -> float | None:
    return next((float(e[key]) for e in trainer.state.log_history if key in e), None)


def train(
    cfg: Config,
    rows: list[dict[str, Any]],
    output_dir: Path,
    live_dir: Path,
    checkpoint_dir: Path | None = None,
    eval_rows: list[dict[str, Any]] | None = None,
) -> TrainingReport:
    """Fine-tune the base on `rows` (chat rows; preference pairs for dpo and kto); save the adapter (or the
    full model) and tokenizer to `output_dir`; checkpoints go to `checkpoint_dir` and resume from it. With
    train.eval_steps > 0, `eval_rows` (the same kinds of rows) are evaluated every train.eval_steps steps."""
    from dvclive import Live

    check_options(cfg)
    if cfg.train.eval_steps > 0 and not eval_rows:
        raise ShapingError(f"train.eval_steps={cfg.train.eval_steps}: no eval rows to evaluate on")
    if cfg.train.keep_best and checkpoint_dir is None:
        raise ShapingError("train.keep_best=true keeps a checkpoint: it needs a checkpoint folder to save them in")
    device = resolve_device(cfg.train.device)
    precision, why_precision = resolve_precision(cfg.train.precision, device)
    checkpointing, why_ckpt = resolve_gradient_checkpointing(cfg.train.gradient_checkpointing, device)
    log.info(
        "%s with %s on %s, precision %s (%s), gradient checkpointing %s (%s)",
        cfg.train.method,
        adapter_kind(cfg),
        device,
        precision,
        why_precision,
        checkpointing,
        why_ckpt,
    )

    if cfg.train.method == "grpo" and cfg.train.vllm:
        check_vllm(device)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg, device, precision, checkpointing)
    if checkpoint_dir is not None:
        saving = checkpoint_args(cfg, checkpoint_dir)
    else:
        saving = {"output_dir": str(output_dir / "trainer"), "save_strategy": "no"}
    args = common_args(cfg, saving, precision, checkpointing, device)
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
    dvclive = DVCLiveCallback(live=live)
    start = RunStart()
    callbacks: list[TrainerCallback] = [dvclive, DVCLiveResume(dvclive), RankReport(), start]
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    builders: dict[str, Callable[..., SFTTrainer | DPOTrainer | KTOTrainer]] = {
        "sft": sft_trainer,
        "dpo": dpo_trainer,
        "kto": kto_trainer,
        "grpo": grpo_trainer,
        "orpo": orpo_trainer,
        "distill": distill_trainer,
    }
    build = builders[cfg.train.method]
    trainer = build(cfg, model, tokenizer, rows, args, callbacks, eval_rows if cfg.train.eval_steps > 0 else None)

    params = list(trainer.model.parameters()) if trainer.model is not None else list(model.parameters())
    trainable = sum(int(p.numel()) for p in params if p.requires_grad)
    total = sum(int(p.numel()) for p in params)
    log.info("training %d of %d parameters (%.2f%%) on %d rows", trainable, total, 100 * trainable / total, len(rows))
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume_checkpoint(checkpoint_dir) if checkpoint_dir else None)
    except torch.OutOfMemoryError as err:
        raise ShapingError(out_of_memory_message(cfg, device, err)) from None
    seconds = time.perf_counter() - t0
    tokens = int(trainer.state.num_input_tokens_seen)
    tokens_this_run = tokens - start.tokens  # a resumed run's speed is its own tokens over its own time
    metrics: dict[str, Any] = {
        "method": cfg.train.method,
        "adapter": adapter_kind(cfg),
        # a QLoRA adapter's 4-bit base, so a server or evaluation loads the base training saw
        "quantization": None
        if cfg.lora.quantization is None or not cfg.lora.enabled
        else {"quant_type": cfg.lora.quantization.quant_type, "double_quant": cfg.lora.quantization.double_quant},
        "train_loss": round(float(result.training_loss), 6),
        "steps": int(result.global_step),
        "resumed_from_step": start.step,
        "tokens": tokens,
        "tokens_this_run": tokens_this_run,
        "tokens_per_second": round(tokens_this_run / seconds, 1) if seconds else 0.0,
        "seconds": round(seconds, 2),
        "trainable_parameters": trainable,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "device": device,
    }
    keys = list(REWARD_METRICS.get(cfg.train.method, ()))
    if cfg.train.method == "grpo":  # each reward's last logged mean: reward_<name>
        keys += [(f"rewards/{name}/mean", f"reward_{name}") for name in getattr(trainer, "reward_func_names", ())]
    for key, name in keys:
        value = last_logged(trainer, key)
        if value is not None:
            metrics[name] = round(value, 6)
    metrics.update(eval_metrics(cfg, trainer))
    if cfg.train.method == "distill" and (first := first_logged(trainer, "reverse_kl")) is not None:
        metrics["reverse_kl_first"] = round(first, 6)  # the first logged window's, for the fall over training
    live.summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    live.make_summary()
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    if cfg.train.merge:
        del trainer, model  # the merge loads the base afresh: free the trained copy first
        if device == "cuda":
            torch.cuda.empty_cache()
        merge_adapter(cfg, output_dir, output_dir / "merged", precision)
        metrics["merged_dir"] = "merged"
    log.info("train loss %.4f, %.0f tokens/s", metrics["train_loss"], metrics["tokens_per_second"])
    return TrainingReport(checkpoint_dir=output_dir, metrics=metrics)
