"""Tinker (Thinking Machines' hosted LoRA service) through its `tinker` SDK: renderers, the
sampling backend `backend: tinker` of the model registry, and evaluation of a Tinker-trained run.

    # conf/models/: a model trained by `backend=tinker` (its reference file), or any Tinker base model
    tuned:
      backend: tinker
      model: models/adapter/tinker.json       # or tinker://<run>/sampler_weights/final, or Qwen/Qwen3-8B
      engine_options: {renderer: auto}        # base_model/renderer, needed for a bare tinker:// path

The SDK (extra `shaping[tinker]`) is imported only here and only when a Tinker model is used; the
API key is read from TINKER_API_KEY by the SDK itself and never passed, logged or written.

A renderer turns conversations into tokens. `chat_template` renders with the tokenizer's own chat
template exactly as TRL's SFTTrainer does for hf_peft (same tokens, same assistant mask), so a
conversation trains on the same data through either backend. A tinker-cookbook renderer name
(`qwen3`, `llama3`, ...) uses the cookbook's renderer, as Tinker's own recipes do; `auto` picks
the cookbook's recommendation for a hub model and `chat_template` for a local folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, Protocol

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from shaping.config.schema import Config, ModelSpec
from shaping.errors import ShapingError
from shaping.evaluation.registry import METRICS, EvalContext, check_metric_names
from shaping.inference.types import ChatRequest, ChatResponse

log = logging.getLogger(__name__)

API_KEY_ENV = "TINKER_API_KEY"
REFERENCE_FILE = "tinker.json"  # what the train stage leaves in paths.adapter_dir for a Tinker run
INSTALL_HINT = "pip install -e '.[tinker]'"
COOKBOOK_HINT = "pip install -e '.[tinker-cookbook]'"
TINKER_SCHEME = "tinker://"


def require_api_key() -> None:
    """Fail before any work when the key is missing; the SDK reads it from the environment."""
    if not os.environ.get(API_KEY_ENV):
        raise ShapingError(
            f"backend=tinker needs a Tinker API key: set the environment variable {API_KEY_ENV} "
            "(it is read from the environment only, never from a config file)"
        )


def import_tinker() -> ModuleType:
    try:
        import tinker
    except ImportError:
        raise ShapingError(f"backend=tinker needs the Tinker SDK: {INSTALL_HINT}") from None
    return tinker


def service_client() -> Any:
    """A tinker.ServiceClient, after checking the key (the SDK reads TINKER_API_KEY itself)."""
    require_api_key()
    return import_tinker().ServiceClient()


# --- renderers -----------------------------------------------------------------------------


LossWeights = list[tuple[re.Pattern[str], float]]  # train.loss_weights, compiled


class Renderer(Protocol):
    name: str
    tokenizer: Any

    def supervised(
        self, messages: list[dict[str, Any]], train_on_prompt: bool, weights: LossWeights | None = None
    ) -> tuple[list[int], list[float]]:
        """(token ids, loss weight per token) of a whole conversation: 0 where no loss is taken, else 1
        or the weight of a train.loss_weights span."""
        ...

    def generation_prompt(self, messages: list[dict[str, Any]]) -> list[int]: ...

    def stop_sequences(self) -> list[int] | list[str]: ...

    def parse(self, tokens: list[int]) -> tuple[str, bool]:
        """The reply's text and whether it ended on a stop sequence (not cut by max_tokens)."""
        ...


class ChatTemplateRenderer:
    """The tokenizer's chat template, tokenized as hf_peft trains on it (shaping.training.sft: the same
    apply_chat_template call as TRL's SFTTrainer, TRL's marked training template where the model's own
    has no {% generation %} markers, and train.loss_weights spans)."""

    name = "chat_template"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._templates: dict[bool, str | None] = {}

    def training_template(self, train_on_prompt: bool) -> str | None:
        from shaping.training.sft import training_template

        if train_on_prompt not in self._templates:
            name = str(self.tokenizer.name_or_path)
            self._templates[train_on_prompt] = training_template(self.tokenizer, train_on_prompt, name)
        return self._templates[train_on_prompt]

    def supervised(
        self, messages: list[dict[str, Any]], train_on_prompt: bool, weights: LossWeights | None = None
    ) -> tuple[list[int], list[float]]:
        from shaping.training.sft import IGNORE, tokenize_conversation

        row = tokenize_conversation(
            self.tokenizer, messages, self.training_template(train_on_prompt), train_on_prompt, None, weights
        )
        if weights:
            return row["input_ids"], [float(w) for w in row["loss_weights"]]
        return row["input_ids"], [0.0 if label == IGNORE else 1.0 for label in row["labels"]]

    def generation_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        enc: Any = self.tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=True
        )
        return [int(t) for t in enc["input_ids"]]

    def stop_sequences(self) -> list[int]:
        """The ids that end an assistant turn: eos and, where the vocabulary has them, ChatML's markers
        (what the local hf backend stops on)."""
        from shaping.inference.hf import CHATML_MARKERS

        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        for marker in CHATML_MARKERS:
            token_id = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(ids)

    def parse(self, tokens: list[int]) -> tuple[str, bool]:
        stops = set(self.stop_sequences())
        end = next((i for i, t in enumerate(tokens) if t in stops), None)
        kept = tokens if end is None else tokens[:end]
        return str(self.tokenizer.decode(kept, skip_special_tokens=True)), end is not None


class CookbookRenderer:
    """A tinker-cookbook renderer (the chat formats Tinker's own recipes train and sample with)."""

    def __init__(self, name: str, base_model: str) -> None:
        try:
            from tinker_cookbook import renderers
            from tinker_cookbook.tokenizer_utils import get_tokenizer
        except ImportError:
            raise ShapingError(
                f"backend.renderer={name} is a tinker-cookbook renderer: {COOKBOOK_HINT} "
                "(or set backend.renderer=chat_template to render with the model's own chat template)"
            ) from None
        self.name = name
        self.tokenizer: Any = get_tokenizer(base_model)
        try:
            # Any: the cookbook types messages as its Message TypedDict; rows here are plain dicts
            self.renderer: Any = renderers.get_renderer(name, self.tokenizer, model_name=base_model)
        except Exception as err:  # the cookbook raises its RendererError for a name it does not know
            raise ShapingError(f"backend.renderer={name}: {err}") from None

    def supervised(
        self, messages: list[dict[str, Any]], train_on_prompt: bool, weights: LossWeights | None = None
    ) -> tuple[list[int], list[float]]:
        from tinker_cookbook.renderers import TrainOnWhat

        if weights:
            raise ShapingError(
                f"train.loss_weights: spans are found in the chat template's text; the cookbook renderer {self.name} "
                "has none. Set backend.renderer=chat_template"
            )
        what = TrainOnWhat.ALL_TOKENS if train_on_prompt else TrainOnWhat.ALL_ASSISTANT_MESSAGES
        model_input, mask = self.renderer.build_supervised_example(messages, train_on_what=what)
        return model_input.to_ints(), [1.0 if w > 0 else 0.0 for w in mask.tolist()]

    def generation_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        return list(self.renderer.build_generation_prompt(messages).to_ints())

    def stop_sequences(self) -> list[int] | list[str]:
        return self.renderer.get_stop_sequences()

    def parse(self, tokens: list[int]) -> tuple[str, bool]:
        from tinker_cookbook.renderers import get_text_content

        message, termination = self.renderer.parse_response(tokens)
        return get_text_content(message), termination.is_clean


def resolve_renderer_name(setting: str, base_model: str) -> str:
    """`auto`: the model's own chat template for a local folder, else the cookbook's recommendation."""
    if setting != "auto":
        return setting
    if Path(base_model).is_dir():
        return ChatTemplateRenderer.name
    try:
        from tinker_cookbook import model_info
    except ImportError:
        raise ShapingError(
            f"backend.renderer=auto takes tinker-cookbook's renderer for {base_model}: {COOKBOOK_HINT}, "
            "or set backend.renderer=chat_template (or a cookbook renderer name)"
        ) from None
    try:
        return model_info.get_recommended_renderer_name(base_model)
    except Exception as err:  # KeyError for a model it does not list, its ConfigurationError for an organisation
        log.info("tinker-cookbook has no renderer for %s (%s): using its chat template", base_model, err)
        return ChatTemplateRenderer.name


def load_renderer(name: str, base_model: str, tokenizer: PreTrainedTokenizerBase | None = None) -> Renderer:
    """A resolved renderer name (not `auto`); `tokenizer` is the chat-template renderer's, if already loaded."""
    if name == ChatTemplateRenderer.name:
        return ChatTemplateRenderer(tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(base_model))
    return CookbookRenderer(name, base_model)


# --- the reference a Tinker training run leaves behind ----------------------------------------


@dataclass
class TinkerReference:
    """models/adapter/tinker.json: where the trained weights live on the service, and how to talk to them."""

    model_path: str  # tinker://... sampler weights (save_weights_for_sampler)
    base_model: str
    renderer: str
    state_path: str | None = None  # tinker://... full state (weights + optimizer), to train on from
    steps: int = 0
    sdk_version: str = ""

    def write(self, path: Path) -> None:
        from shaping.io import write_json

        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> TinkerReference:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ShapingError(f"{path}: not a readable Tinker reference ({err})") from None
        missing = [k for k in ("model_path", "base_model", "renderer") if not saved.get(k)]
        if missing:
            raise ShapingError(f"{path}: missing {', '.join(missing)}; re-run `dvc repro train` with backend=tinker")
        known = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# --- sampling --------------------------------------------------------------------------------


@dataclass
class TinkerSampler:
    """A SamplingClient and the renderer its prompts are built with."""

    client: Any  # tinker.SamplingClient
    renderer: Renderer
    tinker: ModuleType
    seed: int = 0
    _calls: int = field(default=0, init=False)

    @classmethod
    def connect(
        cls, service: Any, model_path: str | None, base_model: str, renderer: Renderer, seed: int = 0
    ) -> TinkerSampler:
        """A client for the weights at `model_path` (tinker://), or for `base_model` itself."""
        client = service.create_sampling_client(model_path=model_path, base_model=None if model_path else base_model)
        return cls(client.result(), renderer, import_tinker(), seed)

    def sample(self, requests: list[ChatRequest], defaults: dict[str, Any]) -> Iterator[tuple[int, ChatResponse]]:
        """Every request is sent before any answer is awaited (the service batches them)."""
        from shaping.inference.hf import truncate_at_stop

        pending = []
        for index, request in enumerate(requests):
            options = {**defaults, **request.options}
            if options.get("min_new_tokens"):
                log.debug("tinker sampling has no min_new_tokens; ignored")
            self._calls += 1
            params = self.tinker.SamplingParams(
                max_tokens=int(options.get("max_new_tokens", 256)),
                temperature=float(options.get("temperature", 1.0)),
                top_p=float(options.get("top_p", 1.0)),
                seed=int(options.get("seed", self.seed + self._calls)),
                stop=self.renderer.stop_sequences(),
            )
            prompt = self.tinker.ModelInput.from_ints(self.renderer.generation_prompt(request.messages))
            stop = [s for s in options.get("stop") or [] if s]
            pending.append((index, stop, self.client.sample(prompt=prompt, num_samples=1, sampling_params=params)))
        for index, stop, future in pending:
            try:
                sequence = future.result().sequences[0]
            except Exception as err:  # a failed request is one failed response, as with every backend
                yield index, ChatResponse(text=None, error=f"tinker: {type(err).__name__}: {err}")
                continue
            text, ended = self.renderer.parse(list(sequence.tokens))
            text, stopped = truncate_at_stop(text, stop)
            finish = "stop" if ended or stopped or sequence.stop_reason == "stop" else "length"
            yield index, ChatResponse(text=text, finish_reason=finish, completion_tokens=len(sequence.tokens))

    def assistant_loss(self, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """Mean next-token loss over assistant tokens (the mask training uses), from prompt logprobs."""
        encoded = [self.renderer.supervised(messages, train_on_prompt=False) for messages in conversations]
        futures = [self.client.compute_logprobs(self.tinker.ModelInput.from_ints(ids)) for ids, _ in encoded]
        total, count = 0.0, 0
        for (_, mask), future in zip(encoded, futures, strict=True):
            logprobs = future.result()  # logprobs[i] = log p(token i | tokens < i); None at 0
            for lp, m in zip(logprobs[1:], mask[1:], strict=True):
                if m and lp is not None:
                    total -= float(lp)
                    count += 1
        if count == 0:
            raise ShapingError("no assistant tokens to score (is the renderer's mask empty?)")
        loss = total / count
        return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 4), "tokens": count}


def registry_target(name: str, spec: ModelSpec, root: Path) -> tuple[str | None, str, str]:
    """(model_path, base_model, renderer setting) of `models.<name>` with backend tinker."""
    options = spec.engine_options
    local = root / spec.model
    if spec.model.endswith(".json") or local.is_file():
        if not local.is_file():
            raise ShapingError(
                f"models.{name}.model: {spec.model} not found (run `dvc repro train` with backend=tinker)"
            )
        ref = TinkerReference.read(local)
        return ref.model_path, ref.base_model, str(options.get("renderer", ref.renderer))
    if spec.model.startswith(TINKER_SCHEME):
        if not options.get("base_model"):
            raise ShapingError(
                f"models.{name}.engine_options.base_model: needed with a tinker:// path (the model it was trained from)"
            )
        return spec.model, str(options["base_model"]), str(options.get("renderer", "auto"))
    return None, spec.model, str(options.get("renderer", "auto"))


class TinkerBackend:
    """`backend: tinker` in the model registry: a batch ChatBackend over a Tinker SamplingClient."""

    def __init__(self, name: str, spec: ModelSpec, defaults: dict[str, Any], root: Path, seed: int = 0) -> None:
        service = service_client()
        model_path, base_model, setting = registry_target(name, spec, root)
        renderer = load_renderer(resolve_renderer_name(setting, base_model), base_model)
        self.sampler = TinkerSampler.connect(service, model_path, base_model, renderer, seed)
        self.defaults = defaults
        log.info("models.%s: tinker %s (renderer %s)", name, model_path or base_model, renderer.name)

    def generate(
        self, requests: list[ChatRequest], on_response: Callable[[int, ChatResponse], None] | None = None
    ) -> list[ChatResponse]:
        results = [ChatResponse(text=None, error="tinker: no answer") for _ in requests]
        for index, response in self.sampler.sample(requests, self.defaults):
            results[index] = response
            if on_response is not None:
                on_response(index, response)
        return results


# --- evaluation of a Tinker-trained run (src/evaluate.py calls this when the adapter is a reference) ----


@dataclass
class TinkerEvalContext(EvalContext):
    """base and tuned are sampling clients: replies come from the service, loss from prompt logprobs."""

    samplers: dict[str, TinkerSampler] = field(default_factory=dict)

    def model(self, name: str) -> NoReturn:
        raise ShapingError(
            "this metric needs the model's weights in this process; a Tinker-trained run offers "
            "loss, samples, think_tags, judge and identity (set eval.metrics accordingly)"
        )

    def replies(self, name: str) -> list[dict[str, Any]]:
        if name not in self._replies:
            prompts = self.prompts
            if name == "teacher":
                if not self.system_prompt:
                    raise ShapingError("the teacher's replies need models.teacher with a sysprompt or sysprompt_file")
                system = {"role": "system", "content": self.system_prompt}
                prompts = [[system, *(m for m in p if m["role"] != "system")] for p in prompts]
            sampler = self.samplers["base" if name == "teacher" else name]
            greedy = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": self.cfg.eval.samples.max_new_tokens}
            replies: list[dict[str, Any]] = [{} for _ in prompts]
            for i, r in sampler.sample([ChatRequest(messages=p) for p in prompts], greedy):
                replies[i] = {"text": r.text, "finish_reason": r.finish_reason, "tokens": r.completion_tokens}
            self._replies[name] = replies
        return self._replies[name]

    def loss(self) -> dict[str, Any]:
        """The `loss` metric's figures (base, teacher = base with the system prompt, tuned)."""
        out = {"base": self.samplers["base"].assistant_loss(self.conversations)}
        if self.system_prompt:
            system = {"role": "system", "content": self.system_prompt}
            out["teacher"] = self.samplers["base"].assistant_loss([[system, *c] for c in self.conversations])
        out["tuned"] = self.samplers["tuned"].assistant_loss(self.conversations)
        return out


def evaluate_reference(
    cfg: Config, rows: list[dict[str, Any]], reference_file: Path, system_prompt: str | None, out_dir: Path
) -> tuple[EvalContext, dict[str, Any]]:
    """eval.metrics for a run trained on Tinker: base and tuned are the service's sampling clients for the
    base model and the trained weights. `loss` comes from prompt logprobs; the metrics built on replies
    (samples, think_tags, judge, identity) run unchanged on the clients' greedy replies."""
    names = list(cfg.eval.metrics)
    check_metric_names(names)
    ref = TinkerReference.read(reference_file)
    renderer = load_renderer(resolve_renderer_name(ref.renderer, ref.base_model), ref.base_model)
    service = service_client()
    ctx = TinkerEvalContext(
        cfg=cfg,
        tokenizer=renderer.tokenizer,
        rows=rows,
        tuned=None,  # type: ignore[arg-type]  # the weights stay on the service
        base=None,
        system_prompt=system_prompt,
        out_dir=out_dir,
        samplers={
            "base": TinkerSampler.connect(service, None, ref.base_model, renderer, cfg.seed),
            "tuned": TinkerSampler.connect(service, ref.model_path, ref.base_model, renderer, cfg.seed),
        },
    )
    ctx.details_dir.mkdir(parents=True, exist_ok=True)  # a DVC output even when no metric writes there
    results: dict[str, Any] = {}
    for name in names:
        found = ctx.loss() if name == "loss" else METRICS[name](ctx)
        for key, value in found.items():
            merged = results.get(key)
            results[key] = {**merged, **value} if isinstance(value, dict) and isinstance(merged, dict) else value
    return ctx, results
