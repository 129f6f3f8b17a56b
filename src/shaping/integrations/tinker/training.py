"""The tinker training backend: the SFT run hf_peft does locally, on the Tinker LoRA service.

    export TINKER_API_KEY=...        # read from the environment only; pip install -e '.[tinker]'
    dvc exp run -S backend=tinker -S backend.base_model=Qwen/Qwen3-8B
    python src/train.py backend=tinker backend.base_model=meta-llama/Llama-3.2-1B train.save_steps=10

The same as hf_peft: the rows and their tokens and loss mask (rendered as TRL renders them, or by a
tinker-cookbook renderer for the service's models), truncation to train.max_length, LoRA rank, epochs
or max_steps, batch size x gradient accumulation per optimizer step, the learning rate schedule
(transformers' own scheduler), AdamW's betas, epsilon and gradient clipping (SFTConfig's defaults),
weight decay, and the loss: the mean over the step's assistant tokens (each datum's weights are its
mask divided by the step's token count, so Tinker's summed cross-entropy is hf_peft's mean).
Not the same: the order rows are drawn in (seeded, but not the HF sampler's permutation), the
service's own LoRA scaling and initialisation (lora.alpha and lora.dropout are not applied, and
say so), and precision (the service's).

Every `train.save_steps` steps the full state (weights + optimizer) is saved on the service and
its tinker:// path appended to checkpoints.jsonl in the train stage's run folder (paths.checkpoint_dir/
<key>, kept across kills), after the steps logged so far are written beside it (steps.jsonl); a rerun
of the same run resumes from the last state and replays those steps into DVCLive first, so the plots
read like one uninterrupted run's (as hf_peft replays its checkpoint's log history). At the end the
sampler weights are saved and `tinker.json` (a TinkerReference) is the stage's adapter output.

train=distill (on-policy context distillation, as tinker-cookbook's on-policy distillation recipe runs it):
each step the student's current weights get a sampling client (save_weights_and_get_sampling_client), which
samples train.num_generations replies to each of the step's prompts rendered WITHOUT a system prompt; the
teacher (a sampling client of the same base model) scores the same reply tokens after its own prompt, the
identity system prompt first (compute_logprobs); each reply token's advantage is the negative reverse KL,
teacher logprob - student logprob, and the step trains with the `importance_sampling` loss. `reverse_kl`
(the mean of student - teacher logprob over the step's reply tokens: the sampled reverse KL) is logged
per step to DVCLive as `loss` and `reverse_kl`, as hf_peft's train=distill logs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from shaping.config.loading import plain
from shaping.config.schema import Config, LoraConfig, TrainConfig
from shaping.data.transforms import to_sft
from shaping.errors import ShapingError
from shaping.integrations.tinker.client import (
    REFERENCE_FILE,
    TinkerReference,
    import_tinker,
    require_api_key,
    service_client,
)
from shaping.integrations.tinker.renderers import Renderer, SupervisedRenderer, resolve_renderer_name
from shaping.integrations.tinker.supervised import SupervisedChatTemplateRenderer, load_supervised_renderer
from shaping.io import atomic_write_text
from shaping.training.hf_peft import TrainingReport
from shaping.training.knobs import check_sampling_knobs
from shaping.training.sft import check_stop_token_learned, compile_loss_weights

if TYPE_CHECKING:
    from dvclive import Live

log = logging.getLogger(__name__)

# PEFT module names -> the groups Tinker adapts (create_lora_training_client's train_* flags)
ATTENTION = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
MLP = frozenset({"gate_proj", "up_proj", "down_proj"})
UNEMBED = frozenset({"lm_head"})


@dataclass
class Example:
    """One conversation as hf_peft's SFTTrainer trains on it: `weights[i]` is 0 where labels[i] == -100,
    else 1 (or a train.loss_weights weight)."""

    tokens: list[int]
    weights: list[float]


def lora_targets(lora: LoraConfig) -> dict[str, bool]:
    """create_lora_training_client's train_attn/train_mlp/train_unembed for the LoRA config, or a clear
    error for what the service cannot do; what it does differently is logged."""
    if not lora.enabled:
        raise ShapingError(
            "lora=none (full fine-tuning): the Tinker service trains LoRA adapters only; use lora=default"
        )
    if lora.quantization is not None:
        raise ShapingError("lora=qlora: the Tinker service holds the base in its own precision; use lora=default")
    if lora.dora:
        raise ShapingError("lora.dora=true: the Tinker service has no DoRA; use lora=default with backend=tinker")
    if lora.bias != "none":
        raise ShapingError(f"lora.bias={lora.bias}: the Tinker service trains no biases; set lora.bias=none")
    log.warning("lora.alpha=%s is not applied: the Tinker service sets its own LoRA scaling", lora.alpha)
    if lora.dropout:
        log.warning("lora.dropout=%s is not applied: the Tinker service trains LoRA without dropout", lora.dropout)
    if lora.target_modules == "all-linear":  # PEFT's all-linear leaves the output layer out
        return {"train_attn": True, "train_mlp": True, "train_unembed": False}
    names = {lora.target_modules} if isinstance(lora.target_modules, str) else set(lora.target_modules)
    unknown = names - ATTENTION - MLP - UNEMBED
    partial = [group for group in (ATTENTION, MLP) if names & group and not group <= names]
    if unknown or partial:
        raise ShapingError(
            f"lora.target_modules={sorted(names)}: the Tinker service adapts whole groups only: all of "
            f"{sorted(ATTENTION)}, all of {sorted(MLP)}, and/or lm_head (or all-linear)"
        )
    return {
        "train_attn": bool(names & ATTENTION),
        "train_mlp": bool(names & MLP),
        "train_unembed": bool(names & UNEMBED),
    }


def encode_rows(rows: list[dict[str, Any]], renderer: SupervisedRenderer, train: TrainConfig) -> list[Example]:
    """The rows as hf_peft's SFTTrainer gets them: to_sft, rendered, masked and weighted, cut to
    train.max_length (keep_start). Where TRL tokenizes itself it then drops rows left with no loss
    token; where hf_peft hands it tokenized rows (loss weights, padding-free without packing) it keeps them."""
    # the renderers take messages only: tools would be lost
    sft_rows = to_sft(
        rows,
        "train.jsonl",
        without_tools="backend=tinker trains conversations without tools for now: "
        "train it with backend=hf_peft (train=sft)",
    )
    conversations = [row["messages"] for row in sft_rows]
    weights = compile_loss_weights(train.loss_weights)
    if isinstance(renderer, SupervisedChatTemplateRenderer):
        template = renderer.training_template(train.train_on_prompt)
        check_stop_token_learned(renderer.tokenizer, conversations, template, train.train_on_prompt, train.max_length)
    keep_masked = bool(weights) or (train.padding_free and not train.packing)
    examples = []
    for index, messages in enumerate(conversations, start=1):
        tokens, token_weights = renderer.supervised(messages, train.train_on_prompt, weights)
        if not any(token_weights) and not keep_masked:
            raise ShapingError(f"train.jsonl:{index}: no token to train on (renderer {renderer.name})")
        tokens, token_weights = tokens[: train.max_length], token_weights[: train.max_length]
        if any(token_weights) or keep_masked:
            examples.append(Example(tokens, token_weights))
    if not examples:
        raise ShapingError(f"train.max_length={train.max_length}: every row is cut before its first assistant token")
    return examples


def build_datums(tinker: ModuleType, examples: list[Example]) -> list[Any]:
    """One step's batch: next-token inputs and targets, and each token's loss weight divided by the step's
    count of loss tokens: hf_peft's loss is sum(w * -log p) / (tokens with w > 0) over the whole step
    (gradient accumulation included), Tinker's cross_entropy is the plain sum sum(w * -log p)."""
    count = sum(sum(1 for w in e.weights[1:] if w > 0) for e in examples)
    datums = []
    for e in examples:
        weights = [w / count if count else 0.0 for w in e.weights[1:]]
        datums.append(
            tinker.Datum(
                model_input=tinker.ModelInput.from_ints(e.tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": tinker.TensorData(data=e.tokens[1:], dtype="int64", shape=[len(e.tokens) - 1]),
                    "weights": tinker.TensorData(data=weights, dtype="float32", shape=[len(weights)]),
                },
            )
        )
    return datums


@dataclass
class DistillPrompt:
    """One training conversation's prompt for train=distill: the student's (no system message) and the
    teacher's (its system prompt, then the same turns), both ready for the assistant's reply."""

    student: list[int]
    teacher: list[int]


def check_distill(train: TrainConfig) -> None:
    """What backend=tinker's train=distill does: on-policy only, with the reverse KL."""
    if train.lmbda != 1.0 or train.beta != 1.0:
        raise ShapingError(
            f"train.lmbda={train.lmbda}, train.beta={train.beta}: backend=tinker distils on the student's own "
            "samples only (lmbda=1) with the reverse KL (beta=1), from the logprobs of the sampled tokens; "
            "set both to 1, or train with backend=hf_peft"
        )
    check_sampling_knobs(train, "train=distill", min_generations=1)


def encode_prompts(rows: list[dict[str, Any]], renderer: Renderer, system: str | None) -> list[DistillPrompt]:
    """Each conversation's turns before its last reply (system messages left out), rendered for the student
    as is and for the teacher after `system`, as shaping.training.distill builds them for hf_peft."""
    prompts = []
    refusal = "train=distill takes conversations without tools: use train=sft for tool-call trajectories"
    for row in to_sft(rows, "train.jsonl", without_tools=refusal):
        turns = [m for m in row["messages"] if m["role"] != "system"][:-1]
        head = [{"role": "system", "content": system}] if system else []
        prompts.append(DistillPrompt(renderer.generation_prompt(turns), renderer.generation_prompt(head + turns)))
    if not prompts:
        raise ShapingError("train.jsonl: no conversation to take prompts from")
    return prompts


def distill_teacher_prompt(cfg: Config) -> str | None:
    """The teacher's system prompt (shaping.training.distill's, from the same keys); the teacher is the base
    model on the service, so models.<teacher> must be the student's own base."""
    from shaping.training.distill import teacher_spec, teacher_system_prompt

    spec = teacher_spec(cfg)
    if spec.model != cfg.model.name_or_path or spec.adapter:
        raise ShapingError(
            f"train.teacher={cfg.train.teacher}: backend=tinker distils the base model on the service reading the "
            f"teacher's system prompt, so models.{cfg.train.teacher} must be the student's base "
            f"({cfg.model.name_or_path}) without an adapter; another teacher model needs backend=hf_peft"
        )
    system, _ = teacher_system_prompt(cfg)
    return system


def distill_datums(
    tinker: ModuleType,
    student: Any,
    teacher: Any,
    prompts: list[DistillPrompt],
    params: Any,
    num_samples: int,
) -> tuple[list[Any], float, int]:
    """One step of on-policy distillation: the student's sampling client samples `num_samples` replies to each
    prompt, the teacher's scores each reply's tokens after its own prompt, and each reply becomes an
    importance_sampling Datum: the sampled tokens as targets, their sampling logprobs, and advantages
    teacher - student logprob on the reply (0 on the prompt). Returns (datums, the mean sampled reverse KL
    over the reply tokens, the tokens sent). All requests of a kind go out before any answer is awaited."""
    sampled = [
        student.sample(prompt=tinker.ModelInput.from_ints(p.student), num_samples=num_samples, sampling_params=params)
        for p in prompts
    ]
    replies = []  # (prompt, reply tokens, their logprobs)
    for p, future in zip(prompts, sampled, strict=True):
        for sequence in future.result().sequences:
            tokens, logprobs = list(sequence.tokens), sequence.logprobs
            if not tokens:
                continue
            if logprobs is None or len(logprobs) != len(tokens):
                raise ShapingError("tinker: the student's sampler returned no logprobs for its tokens")
            replies.append((p, tokens, [float(x) for x in logprobs]))
    scored = [
        teacher.compute_logprobs(tinker.ModelInput.from_ints(p.teacher + tokens), prompt_logprobs_last_n=len(tokens))
        for p, tokens, _ in replies
    ]
    datums, differences, sent = [], [], 0
    for (p, tokens, student_lp), future in zip(replies, scored, strict=True):
        teacher_lp = future.result()[-len(tokens) :]  # the reply's own tokens, after the teacher's prompt
        if any(x is None for x in teacher_lp):
            raise ShapingError("tinker: the teacher's compute_logprobs left reply tokens unscored")
        diff = [s - float(t) for s, t in zip(student_lp, teacher_lp, strict=True)]  # log p - log q per token
        differences += diff
        sequence = p.student + tokens
        pad = [0.0] * (len(p.student) - 1)  # the prompt's targets: no advantage, no loss
        inputs = {
            "target_tokens": sequence[1:],
            "logprobs": pad + student_lp,
            "advantages": pad + [-d for d in diff],
        }
        datums.append(
            tinker.Datum(
                model_input=tinker.ModelInput.from_ints(sequence[:-1]),
                loss_fn_inputs={
                    key: tinker.TensorData(
                        data=values, dtype="int64" if key == "target_tokens" else "float32", shape=[len(values)]
                    )
                    for key, values in inputs.items()
                },
            )
        )
        sent += len(sequence)
    if not datums:
        raise ShapingError("tinker: the student sampled no reply tokens in this step")
    return datums, sum(differences) / len(differences), sent


def total_steps(n_examples: int, train: TrainConfig) -> tuple[int, int]:
    """(optimizer steps in all, steps per epoch), as the HF Trainer counts them."""
    per_step = train.batch_size * train.gradient_accumulation_steps
    per_epoch = max(1, math.ceil(n_examples / per_step))
    total = train.max_steps if train.max_steps > 0 else math.ceil(train.epochs * per_epoch)
    return total, per_epoch


def learning_rates(train: TrainConfig, steps: int) -> list[float]:
    """The learning rate of each optimizer step: transformers' scheduler, stepped as the Trainer does,
    with warmup_ratio read as the Trainer reads warmup_steps (< 1: a share of the steps)."""
    import torch
    from transformers import get_scheduler

    warmup = int(train.warmup_ratio) if train.warmup_ratio >= 1 else math.ceil(steps * train.warmup_ratio)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.learning_rate)
    try:
        scheduler = get_scheduler(train.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    except ValueError as err:
        raise ShapingError(f"train.lr_scheduler={train.lr_scheduler}: {err}") from None
    rates = []
    for _ in range(steps):
        rates.append(float(scheduler.get_last_lr()[0]))
        optimizer.step()
        scheduler.step()
    return rates


def adam_params(tinker: ModuleType, train: TrainConfig, learning_rate: float) -> Any:
    """AdamW as hf_peft runs it: SFTConfig's betas, epsilon and max_grad_norm, train.weight_decay."""
    from trl import SFTConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
    return tinker.AdamParams(
        learning_rate=learning_rate,
        beta1=defaults["adam_beta1"],
        beta2=defaults["adam_beta2"],
        eps=defaults["adam_epsilon"],
        weight_decay=train.weight_decay,
        grad_clip_norm=defaults["max_grad_norm"],
    )


def step_batch(step: int, n_examples: int, per_epoch: int, train: TrainConfig, seed: int) -> list[int]:
    """The examples of optimizer step `step`: each epoch a seeded permutation, cut into steps (a pure
    function of the step, so a resumed run draws what the killed one would have)."""
    epoch, index = divmod(step, per_epoch)
    order = list(range(n_examples))
    random.Random(seed + epoch).shuffle(order)
    per_step = train.batch_size * train.gradient_accumulation_steps
    return order[index * per_step : (index + 1) * per_step]


class RunLog:
    """The run folder's checkpoints.jsonl (tinker:// paths of saved states) and steps.jsonl (what each
    step logged, up to the newest saved state: the log history that state resumes with)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.checkpoints_file = folder / "checkpoints.jsonl"
        self.steps_file = folder / "steps.jsonl"

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        # a kill mid-append leaves at most a torn last line
        lines = path.read_text(encoding="utf-8").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def checkpoints(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self._read(self.checkpoints_file) if c.get("kind") == kind]

    def steps(self, upto: int) -> list[dict[str, Any]]:
        """The logged steps 1..upto (a kill between writing the history and recording its state leaves
        steps after the resumed state, which are redone)."""
        kept = [s for s in self._read(self.steps_file) if s["step"] <= upto]
        if [s["step"] for s in kept] != list(range(1, upto + 1)):
            log.warning(
                "%s holds %d of the %d steps before the resumed state: DVCLive's plots and train_loss of this "
                "run cover only the steps it holds and those run from here",
                self.steps_file,
                len(kept),
                upto,
            )
        return kept

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def add_checkpoint(self, step: int, kind: str, path: str) -> None:
        self._append(self.checkpoints_file, {"step": step, "kind": kind, "path": path, "time": time.time()})

    def add_state(self, step: int, history: list[dict[str, Any]], path: str) -> None:
        """Record a saved state after the history it resumes with: the history is written whole
        (temp file, then rename) before the state's record is appended, so every recorded state
        finds its steps beside it."""
        atomic_write_text(self.steps_file, "".join(json.dumps(s) + "\n" for s in history))
        self.add_checkpoint(step, "state", path)


def log_step(live: Live, record: dict[str, Any], tokens: int, per_epoch: int) -> None:
    """One step's DVCLive row under hf_peft's names and numbering (the optimizer step, from 1), so that
    `dvc plots diff` lines the two backends up; `tokens` is the count seen up to and including it."""
    live.step = record["step"]
    for key in ("loss", "learning_rate"):
        live.log_metric(key, record[key])
    live.log_metric("epoch", record["step"] / per_epoch)
    live.log_metric("num_tokens", tokens)
    if "reverse_kl" in record:  # train=distill, under hf_peft's name
        live.log_metric("reverse_kl", record["reverse_kl"])


def train(
    cfg: Config, rows: list[dict[str, Any]], output_dir: Path, live_dir: Path, checkpoint_dir: Path
) -> TrainingReport:
    """Train on the Tinker service; write `tinker.json` (where the weights are) to `output_dir`.
    `checkpoint_dir` is this run's folder (same config and data), kept across kills."""
    from dvclive import Live

    require_api_key()
    tinker = import_tinker()
    t, backend = cfg.train, cfg.backend
    distill = t.method == "distill"
    if t.method not in ("sft", "distill"):
        raise ShapingError(
            f"train.method={t.method}: backend=tinker trains sft and distill; use one of them, or backend=hf_peft"
        )
    if distill:
        check_distill(t)
    if t.launcher != "none":
        raise ShapingError(
            f"train.launcher={t.launcher}: backend=tinker trains on the service; set train.launcher=none"
        )
    targets = lora_targets(cfg.lora)
    if t.packing:
        log.warning("train.packing=true is not applied: Tinker trains on whole conversations")
    base_model = backend.base_model or cfg.model.name_or_path
    renderer_name = resolve_renderer_name(backend.renderer, base_model)
    tokenizer = None
    if renderer_name == "chat_template" and base_model == cfg.model.name_or_path:
        from shaping.hub import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)  # revision and trust_remote_code as hf_peft loads it
    renderer = load_supervised_renderer(renderer_name, base_model, tokenizer)
    # train=distill: the prompts (the student's, the teacher's); sft: the conversations to train on
    examples: list[Any] = (
        encode_prompts(rows, renderer, distill_teacher_prompt(cfg)) if distill else encode_rows(rows, renderer, t)
    )
    steps, per_epoch = total_steps(len(examples), t)
    rates = learning_rates(t, steps)
    runs = RunLog(checkpoint_dir)
    log.info(
        "tinker: %s, renderer %s, %d rows, %d steps; checkpoints in %s",
        base_model,
        renderer_name,
        len(examples),
        steps,
        runs.checkpoints_file,
    )

    states = runs.checkpoints("state")
    service = service_client()
    if states:
        log.info("tinker: resuming after step %d from %s", states[-1]["step"], states[-1]["path"])
        try:
            client = service.create_training_client_from_state_with_optimizer(states[-1]["path"]).result()
        except Exception as err:  # the SDK's API errors: an expired or foreign state, a key without access
            raise ShapingError(
                f"tinker: cannot resume from {states[-1]['path']} ({type(err).__name__}: {err}); check "
                f"TINKER_API_KEY, or delete {runs.checkpoints_file} to start this run afresh"
            ) from None
        start = int(states[-1]["step"])
    else:
        client = service.create_lora_training_client(
            base_model=base_model, rank=cfg.lora.r, seed=cfg.seed, **targets
        ).result()
        start = 0
    history = runs.steps(start)
    # train=distill's teacher: the same base model on the service, reading the teacher's prompt
    teacher = service.create_sampling_client(base_model=base_model).result() if distill else None

    # a fresh Live (it clears what a killed run left, or DVC removed it), then the resumed state's history
    # replayed, as hf_peft's DVCLiveResume does: the plots read like one uninterrupted run's
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
    live.log_params({"backend": plain(backend), "train": plain(t), "lora_r": cfg.lora.r})  # enums as strings
    tokens = 0
    for logged in history:
        tokens += int(logged["num_tokens"])
        log_step(live, logged, tokens, per_epoch)
    if history:  # once: each sync re-reads every plot file (next_step per replayed step is quadratic)
        live.sync()
    tokens_before = tokens
    t0 = time.perf_counter()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="tinker train"):
        indices = step_batch(step, len(examples), per_epoch, t, cfg.seed)
        record = {"step": step + 1, "learning_rate": rates[step]}
        if distill:
            # the student as it is now samples the step's replies (a seed per step: a resumed run redraws them)
            student = client.save_weights_and_get_sampling_client().result()
            params = tinker.SamplingParams(
                max_tokens=t.max_completion_length,
                temperature=t.temperature,
                seed=(cfg.seed + step) % 2**31,
                stop=renderer.stop_sequences(),
            )
            prompts = [examples[i] for i in indices]
            datums, kl, batch_tokens = distill_datums(tinker, student, teacher, prompts, params, t.num_generations)
            loss_fn = "importance_sampling"
        else:
            batch = [examples[i] for i in indices]
            datums, batch_tokens = build_datums(tinker, batch), sum(len(e.tokens) for e in batch)
            loss_fn = "cross_entropy"
        # both requests go out before either answer is awaited: the service pipelines them
        backward = client.forward_backward(datums, loss_fn=loss_fn)
        optimized = client.optim_step(adam_params(tinker, t, rates[step]))
        result = backward.result()
        optimized.result()
        if distill:  # the quantity the step minimises: the sampled reverse KL, as hf_peft's distill logs it
            record |= {"loss": kl, "reverse_kl": kl}
        else:
            record["loss"] = -sum(
                sum(lp * w for lp, w in zip(o["logprobs"].tolist(), d.loss_fn_inputs["weights"].tolist(), strict=True))
                for o, d in zip(result.loss_fn_outputs, datums, strict=True)
            )
        if not math.isfinite(record["loss"]):
            raise ShapingError(f"train: loss is {record['loss']} at step {step + 1}; lower train.learning_rate")
        tokens += batch_tokens
        record["num_tokens"] = batch_tokens
        history.append(record)
        log_step(live, record, tokens, per_epoch)
        live.next_step()
        if t.save_steps > 0 and (step + 1) % t.save_steps == 0 and step + 1 < steps:
            saved = client.save_state(f"step-{step + 1:06d}", ttl_seconds=backend.checkpoint_ttl_seconds).result()
            runs.add_state(step + 1, history, saved.path)
    seconds = time.perf_counter() - t0
    live.step = steps  # the last step logged (next_step moved it one on), as hf_peft's summary has it

    # the final state (to train on from later), then the weights a SamplingClient loads
    state_path = client.save_state("final").result().path
    runs.add_state(steps, history, state_path)
    model_path = client.save_weights_for_sampler("final").result().path
    runs.add_checkpoint(steps, "sampler", model_path)
    TinkerReference(
        model_path=model_path,
        base_model=base_model,
        renderer=renderer_name,
        state_path=state_path,
        steps=steps,
        sdk_version=str(getattr(tinker, "__version__", "")),
    ).write(output_dir / REFERENCE_FILE)

    ran = steps - start
    metrics: dict[str, Any] = {
        "train_loss": round(sum(s["loss"] for s in history) / len(history), 6) if history else float("nan"),
        "steps": steps,
        "resumed_from_step": start,
        "tokens": tokens,
        "tokens_per_second": round((tokens - tokens_before) / seconds, 1) if ran else 0.0,
        "seconds": round(seconds, 2),
        "base_model": base_model,
        "renderer": renderer_name,
        "model_path": model_path,
    }
    kls = [s["reverse_kl"] for s in history if "reverse_kl" in s]
    if kls:  # the last step's and the first's, as hf_peft's train=distill records them
        metrics |= {"reverse_kl": round(kls[-1], 6), "reverse_kl_first": round(kls[0], 6)}
    live.summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    live.make_summary()
    log.info("tinker: train loss %.4f over %d steps; weights at %s", metrics["train_loss"], steps, model_path)
    return TrainingReport(checkpoint_dir=output_dir, metrics=metrics, backend="tinker")
