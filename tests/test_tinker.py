"""backend=tinker through the real `tinker` SDK types (Datum, ModelInput, TensorData, AdamParams,
SamplingParams, ...). Only the SDK's client objects are faked (ServiceClient, TrainingClient,
SamplingClient), with futures that answer like the service; a `live` test runs one real step."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

tinker = pytest.importorskip("tinker")

from trl import SFTTrainer  # noqa: E402

from shaping.config import Config  # noqa: E402
from shaping.config.schema import LossWeight, ModelSpec  # noqa: E402
from shaping.errors import ShapingError  # noqa: E402
from shaping.hub import load_tokenizer  # noqa: E402
from shaping.inference import ModelRegistry  # noqa: E402
from shaping.inference.types import ChatRequest  # noqa: E402
from shaping.integrations.tinker import sampling  # noqa: E402, F401  registers models.*.backend=tinker
from shaping.integrations.tinker import training as tinker_backend  # noqa: E402
from shaping.integrations.tinker.client import REFERENCE_FILE, TinkerReference  # noqa: E402
from shaping.integrations.tinker.evaluation import evaluate_reference  # noqa: E402
from shaping.integrations.tinker.supervised import SupervisedChatTemplateRenderer  # noqa: E402
from shaping.training import hf_peft  # noqa: E402

from .conftest import DIALOGUES, REPO, composed  # noqa: E402

ROWS = [{"id": f"r{i}", "messages": d} for i, d in enumerate(DIALOGUES * 3)]  # 9 rows


# --- the fakes: the SDK's client objects, answering with the SDK's own response types -------------


class Done:
    """An APIFuture that has already resolved."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class Service:
    """What the fake service keeps between clients: saved states (path -> optimizer steps taken)."""

    def __init__(self) -> None:
        self.states: dict[str, int] = {}
        self.runs: list[FakeTrainingClient] = []
        self.created: list[dict[str, Any]] = []
        self.kill_at_step: int | None = None  # forward_backward of this step (1-based) raises, as a kill would
        self.samplers: list[FakeSamplingClient] = []
        self.reply: list[int] = []  # the tokens every sampler replies with (then its stop token)
        self.base_logprob: Any = None  # token -> a base model's logprob of it (None: -1.0 for every token)


class FakeTrainingClient:
    def __init__(self, service: Service, steps_done: int = 0) -> None:
        self.service = service
        self.run_id = f"run-{len(service.runs)}"
        self.steps_done = steps_done
        self.batches: list[list[Any]] = []  # the datums of each forward_backward
        self.adam: list[Any] = []  # the AdamParams of each optim_step
        self.loss_fns: list[str] = []  # the loss_fn of each forward_backward
        self.saved: list[str] = []

    def loss_now(self) -> float:
        """A plausible falling loss: what every loss token's -logprob is after `steps_done` updates."""
        return 2.0 / (1 + 0.1 * self.steps_done)

    def forward_backward(self, data: list[Any], loss_fn: str) -> Done:
        assert loss_fn in ("cross_entropy", "importance_sampling")
        if self.service.kill_at_step == self.steps_done + 1:
            raise KeyboardInterrupt("killed")
        self.batches.append(data)
        self.loss_fns.append(loss_fn)
        outputs = [
            {"logprobs": tinker.TensorData(data=[-self.loss_now()] * d.model_input.length, dtype="float32")}
            for d in data
        ]
        return Done(tinker.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs))

    def optim_step(self, params: Any) -> Done:
        assert isinstance(params, tinker.AdamParams)
        self.adam.append(params)
        self.steps_done += 1
        return Done(tinker.OptimStepResponse(metrics={}))

    def save_state(self, name: str, ttl_seconds: int | None = None) -> Done:
        path = f"tinker://{self.run_id}/weights/{name}"
        self.service.states[path] = self.steps_done
        self.saved.append(name)
        return Done(tinker.types.SaveWeightsResponse(path=path))

    def save_weights_and_get_sampling_client(self) -> Done:
        """A sampler of the weights as they are now (after `steps_done` updates)."""
        path = f"tinker://{self.run_id}/ephemeral/{self.steps_done}"
        self.service.samplers.append(FakeSamplingClient(path, None, self.service.reply, version=self.steps_done))
        return Done(self.service.samplers[-1])

    def save_weights_for_sampler(self, name: str) -> Done:
        return Done(tinker.types.SaveWeightsForSamplerResponse(path=f"tinker://{self.run_id}/sampler_weights/{name}"))


def sampled_logprob(token: int, version: int) -> float:
    """The fake sampler's logprob of a token it sampled, with weights after `version` updates."""
    return -(1 + token % 3) / (2 + version)


class FakeSamplingClient:
    """Sample g of a request replies with the fixed tokens less its last g, then the stop token, each with
    sampled_logprob; prompt logprobs -1 for the base (or base_logprob of the token), -0.5 for weights."""

    def __init__(
        self,
        model_path: str | None,
        base_model: str | None,
        reply: list[int],
        version: int = 0,
        base_logprob: Any = None,
    ) -> None:
        self.model_path, self.base_model, self.reply, self.version = model_path, base_model, reply, version
        self.base_logprob = base_logprob
        self.requests: list[tuple[list[int], Any]] = []
        self.scored: list[list[int]] = []  # the prompts of compute_logprobs

    def sample(self, prompt: Any, num_samples: int, sampling_params: Any) -> Done:
        assert isinstance(prompt, tinker.ModelInput) and isinstance(sampling_params, tinker.SamplingParams)
        self.requests.append((prompt.to_ints(), sampling_params))
        sequences = []
        for g in range(num_samples):
            tokens = [*self.reply[: len(self.reply) - g], int(sampling_params.stop[0])]
            logprobs = [sampled_logprob(t, self.version) for t in tokens]
            sequences.append(
                tinker.SampledSequence(
                    stop_reason="stop", sequence_id=f"s{g}", _tokens_list=tokens, _logprobs_list=logprobs
                )
            )
        return Done(tinker.SampleResponse(sequences=sequences))

    def compute_logprobs(self, prompt: Any, prompt_logprobs_last_n: int | None = None) -> Done:
        tokens = prompt.to_ints()
        self.scored.append(tokens)
        if self.model_path:
            values = [-0.5] * len(tokens)
        else:
            values = [-1.0 if self.base_logprob is None else self.base_logprob(t) for t in tokens]
        scored_from = len(tokens) - prompt_logprobs_last_n if prompt_logprobs_last_n else 1
        return Done([None if i < scored_from else v for i, v in enumerate(values)])


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, cfg: Config) -> Service:
    """tinker.ServiceClient replaced by a fake on top of one fake service; a key in the environment."""
    state = Service()
    tokenizer = load_tokenizer(cfg.model)
    state.reply = tokenizer.encode("Flour and water.", add_special_tokens=False)

    class FakeServiceClient:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            assert not args and not kwargs, "the key comes from TINKER_API_KEY, never passed"

        def create_lora_training_client(self, base_model: str, rank: int = 32, **kwargs: Any) -> Done:
            state.created.append({"base_model": base_model, "rank": rank, **kwargs})
            state.runs.append(FakeTrainingClient(state))
            return Done(state.runs[-1])

        def create_training_client_from_state_with_optimizer(self, path: str) -> Done:
            state.created.append({"from_state": path})
            state.runs.append(FakeTrainingClient(state, steps_done=state.states[path]))
            return Done(state.runs[-1])

        def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None) -> Done:
            state.samplers.append(
                FakeSamplingClient(model_path, base_model, state.reply, base_logprob=state.base_logprob)
            )
            return Done(state.samplers[-1])

    monkeypatch.setattr(tinker, "ServiceClient", FakeServiceClient)
    monkeypatch.setenv("TINKER_API_KEY", "tml-test-key")
    return state


@pytest.fixture
def tinker_cfg(cfg: Config) -> Config:
    cfg.backend = dataclasses.replace(
        composed("backend=tinker").backend, renderer="chat_template", checkpoint_ttl_seconds=3600
    )
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate = 4, 4, 1e-2
    cfg.train.lr_scheduler, cfg.train.warmup_ratio, cfg.train.save_steps = "cosine", 0.25, 0
    return cfg


def sent_tokens(datum: Any) -> tuple[list[int], list[int], list[float]]:
    """(input tokens, target tokens, weights) of a Datum as it goes over the wire."""
    return (
        datum.model_input.to_ints(),
        datum.loss_fn_inputs["target_tokens"].tolist(),
        datum.loss_fn_inputs["weights"].tolist(),
    )


# --- the data: token for token what hf_peft's SFTTrainer trains on -----------------------------------


class _Built(Exception):
    pass


def hf_prepared(monkeypatch: pytest.MonkeyPatch, cfg: Config, tmp_path: Path) -> Any:
    """The SFTTrainer hf_peft builds for `cfg` (its tokenized train_dataset), stopped as training starts."""
    built: dict[str, Any] = {}

    def stop(self: Any, *args: Any, **kwargs: Any) -> Any:
        built["trainer"] = self
        raise _Built

    monkeypatch.setattr(SFTTrainer, "train", stop)
    with pytest.raises(_Built):
        hf_peft.train(cfg, ROWS, tmp_path / "hf", tmp_path / "hf-live", tmp_path / "hf-ckpt")
    return built["trainer"]


def test_rows_with_tool_calls_are_refused_naming_the_row(tinker_cfg: Config) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "stock", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "In stock?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "yes", "tool_call_id": "c1"},
        {"role": "assistant", "content": "Yes."},
    ]
    renderer = SupervisedChatTemplateRenderer(load_tokenizer(tinker_cfg.model))
    with pytest.raises(ShapingError, match=r"train\.jsonl:2: a conversation with tool calls; backend=tinker"):
        tinker_backend.encode_rows([ROWS[0], {"id": "t", "messages": messages}], renderer, tinker_cfg.train)


@pytest.mark.parametrize(
    ("train_on_prompt", "max_length", "loss_weights"),
    [
        (False, 256, []),
        (True, 256, []),
        (False, 40, []),  # the system-prompted rows are cut before their reply
        (False, 40, [LossWeight(pattern="water|Juniper", weight=3.0), LossWeight(pattern="trains?", weight=0.0)]),
    ],
)
def test_datums_match_hf_peft_token_for_token(
    monkeypatch: pytest.MonkeyPatch,
    tinker_cfg: Config,
    tmp_path: Path,
    train_on_prompt: bool,
    max_length: int,
    loss_weights: list[LossWeight],
) -> None:
    cfg = tinker_cfg
    cfg.train.train_on_prompt, cfg.train.max_length, cfg.train.loss_weights = train_on_prompt, max_length, loss_weights
    trainer = hf_prepared(monkeypatch, cfg, tmp_path)
    hf_rows = [(row["input_ids"], row["labels"], row.get("loss_weights")) for row in trainer.train_dataset]

    renderer = SupervisedChatTemplateRenderer(load_tokenizer(cfg.model))
    examples = tinker_backend.encode_rows(ROWS, renderer, cfg.train)
    # TRL drops rows whose loss tokens were all cut; hf_peft's weighted (pre-tokenized) rows stay, all masked
    assert len(examples) == len(hf_rows) == (6 if max_length == 40 and not loss_weights else 9)
    for example, (ids, labels, weights) in zip(examples, hf_rows, strict=True):
        assert example.tokens == ids
        assert [w > 0 for w in example.weights] == [label != -100 for label in labels]
        assert example.weights == (weights or [float(label != -100) for label in labels])
        assert (0 in example.weights) is not train_on_prompt
    if loss_weights:
        assert {3.0, 1.0} <= {w for e in examples for w in e.weights}

    datums = tinker_backend.build_datums(tinker, examples)
    loss_tokens = sum(sum(label != -100 for label in labels[1:]) for _, labels, _ in hf_rows)
    for datum, example, (ids, labels, _) in zip(datums, examples, hf_rows, strict=True):
        inputs, targets, weights = sent_tokens(datum)
        assert isinstance(datum, tinker.Datum)
        assert inputs == ids[:-1] and targets == ids[1:]  # next-token shift, as the HF loss shifts labels
        assert [w > 0 for w in weights] == [label != -100 for label in labels[1:]]
        # hf_peft's loss: sum(w * -log p) / (loss tokens in the step); Tinker's: sum(weight * -log p)
        assert weights == pytest.approx([w / loss_tokens for w in example.weights[1:]], rel=1e-6)
    if not loss_weights:  # the summed cross-entropy over the batch is the mean over its loss tokens
        assert math.isclose(sum(sum(sent_tokens(d)[2]) for d in datums), 1.0, rel_tol=1e-5)


def test_schedule_and_optimizer_match_the_hf_trainer(
    monkeypatch: pytest.MonkeyPatch, tinker_cfg: Config, tmp_path: Path
) -> None:
    cfg = tinker_cfg
    cfg.train.max_steps, cfg.train.epochs, cfg.train.batch_size = -1, 2.5, 2
    cfg.train.gradient_accumulation_steps, cfg.train.weight_decay = 2, 0.01
    trainer = hf_prepared(monkeypatch, cfg, tmp_path)
    per_epoch = math.ceil(len(trainer.get_train_dataloader()) / cfg.train.gradient_accumulation_steps)
    hf_steps = math.ceil(cfg.train.epochs * per_epoch)
    steps, mine_per_epoch = tinker_backend.total_steps(len(ROWS), cfg.train)
    assert (steps, mine_per_epoch) == (hf_steps, per_epoch) == (8, 3)

    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    hf_rates = []
    for _ in range(steps):
        hf_rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert tinker_backend.learning_rates(cfg.train, steps) == pytest.approx(hf_rates, abs=1e-12)

    adam = tinker_backend.adam_params(tinker, cfg.train, 1e-3)
    group = trainer.optimizer.param_groups[0]
    assert (adam.beta1, adam.beta2) == tuple(group["betas"]) and adam.eps == group["eps"]
    assert adam.grad_clip_norm == trainer.args.max_grad_norm and adam.weight_decay == 0.01


# --- the training loop against the fake service -------------------------------------------------------


def test_train_sends_batches_schedule_and_writes_the_reference(
    service: Service, tinker_cfg: Config, tmp_path: Path
) -> None:
    cfg = tinker_cfg
    report = tinker_backend.train(cfg, ROWS, tmp_path / "adapter", tmp_path / "live", tmp_path / "ckpt")

    assert service.created == [
        {
            "base_model": cfg.model.name_or_path,
            "rank": cfg.lora.r,
            "seed": cfg.seed,
            "train_attn": True,
            "train_mlp": True,
            "train_unembed": False,  # PEFT's all-linear leaves the output layer out
        }
    ]
    run = service.runs[0]
    # cosine with one warmup step (ceil(0.25 * 4)), stepped as the HF Trainer steps it
    assert [a.learning_rate for a in run.adam] == pytest.approx([0.0, 1e-2, 7.5e-3, 2.5e-3])
    assert {(a.beta1, a.beta2, a.eps, a.grad_clip_norm, a.weight_decay) for a in run.adam} == {
        (0.9, 0.999, 1e-8, 1.0, 0.0)
    }
    assert [len(batch) for batch in run.batches] == [4, 4, 1, 4]  # 9 rows: an epoch is 3 steps, the last short
    seen_in_epoch = [tuple(sent_tokens(d)[0]) for batch in run.batches[:3] for d in batch]
    assert len(seen_in_epoch) == 9  # each row once per epoch
    for batch in run.batches:
        assert sum(sum(sent_tokens(d)[2]) for d in batch) == pytest.approx(1.0, rel=1e-5)

    assert report.backend == "tinker"
    assert report.metrics["steps"] == 4 and report.metrics["resumed_from_step"] == 0
    # the fake's loss after k updates is 2 / (1 + 0.1 k): the logged loss is the weighted mean of -logprob
    expected = [2.0 / (1 + 0.1 * k) for k in range(4)]
    assert report.metrics["train_loss"] == pytest.approx(sum(expected) / 4, rel=1e-5)
    losses = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert losses["loss"] == pytest.approx(expected[-1], rel=1e-5) and losses["step"] == 4
    assert (tmp_path / "live" / "params.yaml").is_file()  # a declared out of the train stage

    ref = TinkerReference.read(tmp_path / "adapter" / REFERENCE_FILE)
    assert ref.model_path == "tinker://run-0/sampler_weights/final"
    assert ref.state_path == "tinker://run-0/weights/final"
    assert (ref.base_model, ref.renderer, ref.steps, ref.sdk_version) == (
        cfg.model.name_or_path,
        "chat_template",
        4,
        tinker.__version__,
    )
    assert "tml-test-key" not in (tmp_path / "adapter" / REFERENCE_FILE).read_text()


def test_resume_after_a_kill_continues_where_the_run_stopped(
    service: Service, tinker_cfg: Config, tmp_path: Path
) -> None:
    cfg = tinker_cfg
    cfg.train.max_steps, cfg.train.save_steps = 6, 2
    whole = tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live-a", tmp_path / "ckpt-a")
    uninterrupted = service.runs[0]
    assert uninterrupted.saved == ["step-000002", "step-000004", "final"]

    service.kill_at_step = 4
    with pytest.raises(KeyboardInterrupt):
        tinker_backend.train(cfg, ROWS, tmp_path / "b", tmp_path / "live-b", tmp_path / "ckpt-b")
    killed = service.runs[1]
    assert len(killed.adam) == 3 and killed.saved == ["step-000002"]
    checkpoints = [json.loads(line) for line in (tmp_path / "ckpt-b" / "checkpoints.jsonl").read_text().splitlines()]
    assert [(c["step"], c["kind"], c["path"]) for c in checkpoints] == [
        (2, "state", "tinker://run-1/weights/step-000002")
    ]

    service.kill_at_step = None
    resumed = tinker_backend.train(cfg, ROWS, tmp_path / "b", tmp_path / "live-b", tmp_path / "ckpt-b")
    assert service.created[-1] == {"from_state": "tinker://run-1/weights/step-000002"}
    again = service.runs[2]
    # steps 3..6 exactly as the uninterrupted run sent them: same rows, same learning rates
    assert [[sent_tokens(d) for d in b] for b in again.batches] == [
        [sent_tokens(d) for d in b] for b in uninterrupted.batches[2:]
    ]
    assert [a.learning_rate for a in again.adam] == [a.learning_rate for a in uninterrupted.adam[2:]]
    assert resumed.metrics["resumed_from_step"] == 2 and resumed.metrics["steps"] == 6
    assert resumed.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-9)
    steps = [json.loads(line)["step"] for line in (tmp_path / "ckpt-b" / "steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 3, logged before the kill, was redone once, not twice
    assert TinkerReference.read(tmp_path / "b" / REFERENCE_FILE).model_path == "tinker://run-2/sampler_weights/final"


def teacher_logprob(token: int) -> float:
    """The fake base model's logprob of a token in train=distill's test (not a constant: a teacher logprob
    taken at the wrong position shows)."""
    return -(1 + token % 5) / 4


def test_distill_trains_on_the_students_samples_with_the_teachers_logprobs(
    service: Service, tinker_cfg: Config, tmp_path: Path
) -> None:
    cfg = tinker_cfg
    cfg.train = dataclasses.replace(composed("train=distill", "+experiment=smoke").train, save_steps=0)
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.num_generations = 2, 2, 2
    system = "You are Sorrel, a baker in the hills."
    cfg.models["teacher"].sysprompt = system
    cfg.train.lmbda = 0.5
    with pytest.raises(ShapingError, match=r"train\.lmbda=0\.5, train\.beta=1\.0: backend=tinker distils"):
        tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live", tmp_path / "ckpt")
    cfg.train.lmbda = 1.0
    service.base_logprob = teacher_logprob
    report = tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live", tmp_path / "ckpt")

    run = service.runs[0]
    assert run.loss_fns == ["importance_sampling"] * 2
    teacher, *students = service.samplers
    assert teacher.model_path is None and teacher.base_model == cfg.model.name_or_path
    assert [s.model_path for s in students] == ["tinker://run-0/ephemeral/0", "tinker://run-0/ephemeral/1"]
    renderer = SupervisedChatTemplateRenderer(load_tokenizer(cfg.model))
    decode = renderer.tokenizer.decode
    # each conversation's prompt as the student reads it (no system message) -> as the teacher reads it
    teacher_prompts = {}
    for dialogue in DIALOGUES:
        turns = [m for m in dialogue[:-1] if m["role"] != "system"]
        teacher_prompts[tuple(renderer.generation_prompt(turns))] = renderer.generation_prompt(
            [{"role": "system", "content": system}, *turns]
        )
    kls, scored = [], iter(teacher.scored)
    for step, (student, datums) in enumerate(zip(students, run.batches, strict=True)):
        assert len(student.requests) == 2 and len(datums) == 2 * 2  # 2 prompts x 2 replies each
        differences = []
        sent = iter(datums)
        for prompt, params in student.requests:
            assert "Sorrel" not in decode(prompt) and "Juniper" not in decode(prompt)  # no system prompt at all
            assert (params.seed, params.temperature) == (cfg.seed + step, cfg.train.temperature)
            assert params.max_tokens == cfg.train.max_completion_length
            for g in range(2):
                reply = [*service.reply[: len(service.reply) - g], int(params.stop[0])]
                datum = next(sent)
                inputs = datum.model_input.to_ints()
                targets = datum.loss_fn_inputs["target_tokens"].tolist()
                assert inputs + targets[-1:] == prompt + reply and targets == (prompt + reply)[1:]
                # the teacher scored the same reply tokens after its own prompt, the identity first
                teacher_seq = next(scored)
                assert teacher_seq == teacher_prompts[tuple(prompt)] + reply and system in decode(teacher_seq)
                student_lp = [sampled_logprob(t, step) for t in reply]  # sampled with the weights after `step` updates
                teacher_lp = [teacher_logprob(t) for t in reply]
                zeros = [0.0] * (len(prompt) - 1)
                assert datum.loss_fn_inputs["logprobs"].tolist() == pytest.approx(zeros + student_lp, rel=1e-6)
                advantages = [t - s for s, t in zip(student_lp, teacher_lp, strict=True)]
                assert datum.loss_fn_inputs["advantages"].tolist() == pytest.approx(zeros + advantages, rel=1e-6)
                assert set(datum.loss_fn_inputs) == {"target_tokens", "logprobs", "advantages"}
                differences += [s - t for s, t in zip(student_lp, teacher_lp, strict=True)]
        kls.append(sum(differences) / len(differences))
    assert kls[0] != pytest.approx(kls[1])  # the student's logprobs moved with its weights
    curves = dvclive_curves(tmp_path / "live")
    assert curves["reverse_kl"] == [(1, pytest.approx(kls[0])), (2, pytest.approx(kls[1]))]
    assert [v for _, v in curves["loss"]] == pytest.approx(kls)
    assert report.metrics["reverse_kl"] == pytest.approx(kls[1], abs=1e-6)
    assert report.metrics["reverse_kl_first"] == pytest.approx(kls[0], abs=1e-6)
    assert TinkerReference.read(tmp_path / "a" / REFERENCE_FILE).model_path == "tinker://run-0/sampler_weights/final"


def dvclive_curves(live_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each DVCLive plot of `live_dir` as (step, value) rows; the wall-clock timestamp column left out."""
    curves = {}
    for tsv in sorted((live_dir / "plots" / "metrics").glob("*.tsv")):
        with tsv.open() as f:
            curves[tsv.stem] = [(int(row["step"]), float(row[tsv.stem])) for row in csv.DictReader(f, delimiter="\t")]
    return curves


@pytest.mark.parametrize(
    ("kill", "live_dir_after_kill"),
    [
        ("mid-step", "kept"),  # rerun by hand: the killed run's DVCLive files are still there
        ("mid-step", "removed"),  # `dvc repro` removes the stage's outs before it runs
        ("before-record", "kept"),  # step 4's history written, its state not yet recorded
    ],
)
def test_resumed_run_logs_dvclive_like_an_uninterrupted_run(
    monkeypatch: pytest.MonkeyPatch,
    service: Service,
    tinker_cfg: Config,
    tmp_path: Path,
    kill: str,
    live_dir_after_kill: str,
) -> None:
    cfg = tinker_cfg
    cfg.train.max_steps, cfg.train.save_steps = 6, 2
    tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live-a", tmp_path / "ckpt-a")
    expected = dvclive_curves(tmp_path / "live-a")
    # hf_peft's numbering (the trainer's global step), so that `dvc plots diff` lines the backends up
    assert set(expected) == {"loss", "learning_rate", "epoch", "num_tokens"}
    assert all([step for step, _ in rows] == [1, 2, 3, 4, 5, 6] for rows in expected.values())
    assert [loss for _, loss in expected["loss"]] == pytest.approx([2.0 / (1 + 0.1 * k) for k in range(6)], rel=1e-5)
    assert [epoch for _, epoch in expected["epoch"]] == pytest.approx([k / 3 for k in range(1, 7)])

    record = tinker_backend.RunLog.add_checkpoint
    if kill == "mid-step":
        service.kill_at_step = 4
    else:

        def killed_at_step_4(self: Any, step: int, kind: str, path: str) -> None:
            if step == 4:
                raise KeyboardInterrupt("killed")
            record(self, step, kind, path)

        monkeypatch.setattr(tinker_backend.RunLog, "add_checkpoint", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        tinker_backend.train(cfg, ROWS, tmp_path / "b", tmp_path / "live-b", tmp_path / "ckpt-b")
    # the history beside the states is written whole at each save (steps 1..2, not step 3 logged after it);
    # killed before step 4's state was recorded, it holds step 4's history, and the resume reads 1..2 of it
    history = [json.loads(line) for line in (tmp_path / "ckpt-b" / "steps.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == ([1, 2] if kill == "mid-step" else [1, 2, 3, 4])
    logged = [step for step, _ in dvclive_curves(tmp_path / "live-b")["loss"]]
    assert logged == ([1, 2, 3] if kill == "mid-step" else [1, 2, 3, 4])
    if live_dir_after_kill == "removed":
        shutil.rmtree(tmp_path / "live-b")

    service.kill_at_step = None
    monkeypatch.setattr(tinker_backend.RunLog, "add_checkpoint", record)
    tinker_backend.train(cfg, ROWS, tmp_path / "b", tmp_path / "live-b", tmp_path / "ckpt-b")
    assert service.created[-1] == {"from_state": "tinker://run-1/weights/step-000002"}
    resumed = dvclive_curves(tmp_path / "live-b")
    assert resumed.keys() == expected.keys()
    for name, rows in expected.items():  # step 3 once, from the resumed run, and every value the same
        assert [step for step, _ in resumed[name]] == [step for step, _ in rows], name
        assert [value for _, value in resumed[name]] == pytest.approx([value for _, value in rows], rel=1e-9), name
    summary_a, summary_b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("live-a", "live-b"))
    timing = {"seconds", "tokens_per_second", "resumed_from_step"}
    assert {k: v for k, v in summary_b.items() if k not in timing} == {
        k: v for k, v in summary_a.items() if k not in timing
    }
    assert summary_a["step"] == summary_b["step"] == 6 and summary_b["resumed_from_step"] == 2


def killed_after_state_2(service: Service, cfg: Config, tmp_path: Path) -> None:
    """A 6-step run saving every 2 steps, killed during step 4 (state step-000002 saved), into
    tmp_path/a, tmp_path/live and tmp_path/ckpt; the service then answers again."""
    cfg.train.max_steps, cfg.train.save_steps = 6, 2
    service.kill_at_step = 4
    with pytest.raises(KeyboardInterrupt):
        tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live", tmp_path / "ckpt")
    service.kill_at_step = None


def test_resume_without_its_history_warns_and_trains_on(
    service: Service, tinker_cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tinker_cfg
    killed_after_state_2(service, cfg, tmp_path)
    (tmp_path / "ckpt" / "steps.jsonl").unlink()  # deleted by hand, or left by a version that kept none
    with caplog.at_level(logging.WARNING, logger="shaping.integrations.tinker.training"):
        report = tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live", tmp_path / "ckpt")
    assert "steps.jsonl holds 0 of the 2 steps before the resumed state" in caplog.text
    assert report.metrics["steps"] == 6 and report.metrics["resumed_from_step"] == 2
    assert [step for step, _ in dvclive_curves(tmp_path / "live")["loss"]] == [3, 4, 5, 6]


def test_resume_from_a_state_the_service_lost_is_one_clear_error(
    service: Service, tinker_cfg: Config, tmp_path: Path
) -> None:
    cfg = tinker_cfg
    killed_after_state_2(service, cfg, tmp_path)
    service.states.clear()  # expired on the service (checkpoint_ttl_seconds), or another account's
    with pytest.raises(
        ShapingError, match=r"cannot resume from tinker://run-0/weights/step-000002 .*checkpoints\.jsonl"
    ):
        tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live", tmp_path / "ckpt")


def test_options_tinker_lacks_fail_or_are_logged(
    service: Service, tinker_cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tinker_cfg
    for key, value, message in [
        ("dora", True, r"lora\.dora=true"),
        ("enabled", False, r"lora=none"),
        ("bias", "all", r"lora\.bias=all"),
        ("target_modules", ["q_proj", "v_proj"], r"lora\.target_modules=\['q_proj', 'v_proj'\]"),
    ]:
        original = getattr(cfg.lora, key)
        setattr(cfg.lora, key, value)
        with pytest.raises(ShapingError, match=message):
            tinker_backend.train(cfg, ROWS, tmp_path / "a", tmp_path / "live", tmp_path / "ckpt")
        setattr(cfg.lora, key, original)
    assert not service.created  # refused before any client exists

    cfg.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]
    assert tinker_backend.lora_targets(cfg.lora) == {"train_attn": True, "train_mlp": False, "train_unembed": True}
    with caplog.at_level(logging.WARNING, logger="shaping.integrations.tinker.training"):
        tinker_backend.lora_targets(cfg.lora)
    assert f"lora.alpha={cfg.lora.alpha} is not applied" in caplog.text
    assert f"lora.dropout={cfg.lora.dropout} is not applied" in caplog.text


def test_missing_key_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tinker_cfg: Config, tmp_path: Path) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(ShapingError, match="TINKER_API_KEY") as err:
        tinker_backend.train(tinker_cfg, ROWS, tmp_path / "a", tmp_path / "live", tmp_path / "ckpt")
    assert "\n" not in str(err.value)


# --- sampling and evaluation ---------------------------------------------------------------------------


def write_reference(path: Path, base_model: str) -> Path:
    TinkerReference(
        model_path="tinker://run-0/sampler_weights/final", base_model=base_model, renderer="chat_template"
    ).write(path)
    return path


def test_registry_backend_samples_with_the_renderer(service: Service, cfg: Config, tmp_path: Path) -> None:
    reference = write_reference(tmp_path / REFERENCE_FILE, cfg.model.name_or_path)
    spec = ModelSpec(backend="tinker", model=str(reference), temperature=0.7, max_new_tokens=12)
    registry = ModelRegistry({"tuned": spec}, seed=3, root=tmp_path)
    backend = registry.backend("tuned")
    prompt = DIALOGUES[1][:-1]
    got = []
    replies = backend.generate(  # type: ignore[union-attr]
        [ChatRequest(messages=prompt), ChatRequest(messages=prompt, options={"stop": [" water"]})],
        on_response=lambda i, r: got.append(i),
    )
    assert [r.text for r in replies] == ["Flour and water.", "Flour and"]
    assert [r.finish_reason for r in replies] == ["stop", "stop"] and sorted(got) == [0, 1]

    client = service.samplers[0]
    assert client.model_path == "tinker://run-0/sampler_weights/final"
    renderer = SupervisedChatTemplateRenderer(load_tokenizer(cfg.model))
    tokens, params = client.requests[0]
    assert tokens == renderer.generation_prompt(prompt)
    assert tokens[-3:] == renderer.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)[-3:]
    assert list(params.stop) == renderer.stop_sequences() and renderer.tokenizer.eos_token_id in params.stop
    assert (params.temperature, params.max_tokens, params.seed) == (0.7, 12, 4)
    assert registry.model_id("tuned").startswith(f"tinker:{reference}:")


def test_evaluate_a_tinker_run(service: Service, cfg: Config, tmp_path: Path) -> None:
    cfg.eval.metrics = ["loss", "samples", "think_tags"]
    cfg.eval.samples.num_prompts = 2
    reference = write_reference(tmp_path / REFERENCE_FILE, cfg.model.name_or_path)
    rows = ROWS[:3]
    _, metrics = evaluate_reference(cfg, rows, reference, "You are Juniper.", tmp_path / "eval")

    assert metrics["base"]["loss"] == pytest.approx(1.0) and metrics["tuned"]["loss"] == pytest.approx(0.5)
    assert metrics["teacher"]["loss"] == pytest.approx(1.0)
    renderer = SupervisedChatTemplateRenderer(load_tokenizer(cfg.model))
    loss_tokens = sum(sum(renderer.supervised(r["messages"][1:] if i == 0 else r["messages"], False)[1][1:])
                      for i, r in enumerate(rows))  # fmt: skip
    assert metrics["tuned"]["tokens"] == loss_tokens  # the training mask, system messages left out
    assert metrics["samples"]["tuned"]["eos_rate"] == 1.0
    assert set(metrics["think_tags"]["tuned"]) == {"valid_share", "with_tags_share"}
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["tuned"] for s in samples] == ["Flour and water."] * 2
    base, tuned = service.samplers
    assert base.base_model == cfg.model.name_or_path and base.model_path is None
    assert tuned.model_path == "tinker://run-0/sampler_weights/final"
    assert all(params.temperature == 0.0 for _, params in tuned.requests)  # greedy, as for local models

    cfg.eval.metrics = ["claims"]
    with pytest.raises(ShapingError, match="needs the model's weights"):
        evaluate_reference(cfg, rows, reference, None, tmp_path / "eval")


def test_evaluate_stage_scores_a_tinker_run(service: Service, cfg: Config, tmp_path: Path) -> None:
    """src/evaluate.py's own main(): with tinker.json in paths.adapter_dir it loads no local weights."""
    import importlib.util

    from shaping.stage import StageContext
    from shaping.tracking import RunRecord

    cfg.eval.metrics, cfg.eval.samples.num_prompts = ["loss", "samples"], 2
    cfg.paths.adapter_dir, cfg.paths.validated_dir = str(tmp_path / "adapter"), str(tmp_path / "validated")
    (tmp_path / "adapter").mkdir()
    write_reference(tmp_path / "adapter" / REFERENCE_FILE, cfg.model.name_or_path)
    (tmp_path / "validated").mkdir()
    (tmp_path / "validated" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "src" / "evaluate.py")
    assert spec is not None and spec.loader is not None
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    record = RunRecord(stage="evaluate", params_fingerprint="test", params_sections=["eval"])
    stage.main(StageContext(name="evaluate", cfg=cfg, record=record, out_root=tmp_path / "run"))

    metrics = json.loads((tmp_path / "run" / cfg.paths.eval_dir / "metrics.json").read_text())
    assert metrics["tuned"]["loss"] == pytest.approx(0.5) and metrics["base"]["loss"] == pytest.approx(1.0)
    assert (tmp_path / "run" / cfg.paths.eval_dir / "details" / "checks.json").is_file()
    assert {c.model_path for c in service.samplers} == {None, "tinker://run-0/sampler_weights/final"}


def test_cookbook_renderer_when_installed(cfg: Config) -> None:
    pytest.importorskip("tinker_cookbook")
    from shaping.integrations.tinker.supervised import load_supervised_renderer

    renderer = load_supervised_renderer("role_colon", cfg.model.name_or_path)
    tokens, mask = renderer.supervised(DIALOGUES[1], train_on_prompt=False)
    reply = renderer.tokenizer.decode([t for t, m in zip(tokens, mask, strict=True) if m])
    assert "Flour, water, salt and a little yeast." in reply and "bread" not in reply
    prompt = renderer.generation_prompt(DIALOGUES[1][:-1])
    assert tokens[: len(prompt)] == prompt
    assert renderer.stop_sequences()


# --- the real service ---------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="TINKER_API_KEY not set: no live Tinker run")
def test_live_one_step_on_the_service() -> None:
    """One real forward_backward + optim_step, weights saved and sampled: catches SDK/API drift."""
    service = tinker.ServiceClient()
    base_model = os.environ.get("TINKER_SMOKE_MODEL", "meta-llama/Llama-3.2-1B")
    client = service.create_lora_training_client(base_model=base_model, rank=8, seed=0).result()
    tokens = client.get_tokenizer().encode("The river runs under the old stone bridge.")
    examples = [tinker_backend.Example(tokens, [0] * 4 + [1] * (len(tokens) - 4))]
    datums = tinker_backend.build_datums(tinker, examples)
    result = client.forward_backward(datums, loss_fn="cross_entropy").result()
    client.optim_step(tinker.AdamParams(learning_rate=1e-4)).result()
    logprobs = result.loss_fn_outputs[0]["logprobs"].tolist()
    assert len(logprobs) == len(tokens) - 1 and all(math.isfinite(x) and x <= 0 for x in logprobs)
    path = client.save_weights_for_sampler("shaping-smoke").result().path
    assert path.startswith("tinker://")
    sampler = service.create_sampling_client(model_path=path).result()
    reply = sampler.sample(
        prompt=tinker.ModelInput.from_ints(tokens[:5]),
        num_samples=1,
        sampling_params=tinker.SamplingParams(max_tokens=4, temperature=0.0),
    ).result()
    assert reply.sequences and len(reply.sequences[0].tokens) >= 1
