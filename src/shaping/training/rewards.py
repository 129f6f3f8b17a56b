"""Reward functions for train=grpo, composed in config (`train.rewards`) from a registry.

    train:
      rewards:
        - {name: eos, weight: 1.0, args: {within: 48}}
        - {name: length_band, weight: 0.5, args: {min: 8, max: 64, unit: tokens}}
        - {name: think_tags, weight: 0.5}
        - {name: "mypkg.rewards:brevity", weight: 1.0, args: {limit: 40}}

Registry (each scores one sampled reply; TRL sums them with their weights and logs each one's mean as
`rewards/<name>/mean`):

    length_band   1.0 when the reply's length is within [min, max] (unit: tokens or chars), else 0.0
    eos           1.0 when the reply ended with an end-of-sequence token within `within` tokens, else 0.0
    think_tags    1.0 when its <think> tags are valid (shaping.data.think_tags, the validate stage's check;
                  required=true: and there is at least one complete block), else 0.0
    judge         train.judge.rubric scored by the registry model train.judge.model (shaping.inference.rubric,
                  as the evaluation's judge asks): the mean of its criteria scaled to [0, 1]; an answer with
                  no readable score, or a failed request, is 0.0, counted (rewards/judge/unparseable) and warned
    identity_agreement
                  the sentence-embedding cosine (shaping.inference.embeddings) of the reply to the teacher's
                  reply to the same prompt (train.identity: models.<teacher> asked, or the row's own reply),
                  clipped at 0; with train.identity.similarity_threshold, 1.0 at or above it, else 0.0

judge and identity_agreement take no `args` (their sections are train.judge and train.identity) and are
asynchronous: TRL awaits them together on its event loop, and their requests go through the model registry's
async backends (a local hf model gets each step's requests in batched generate() calls, an openai endpoint up
to max_concurrency at once). Identical requests are sent once, and every answer is kept in the response cache
(shaping.inference.cache) at train.reward_cache_dir, so a resumed or repeated run asks nothing twice.

Any other name of the form `pkg.module:function` is a user callable with TRL's reward signature,
`function(prompts, completions, completion_ids, **kwargs) -> list[float | None]` (completions are
conversational: `[{"role": "assistant", "content": ...}]` each), called with its `args` as keyword
arguments too. A reward that raises stops training with an error naming the reward and the step.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from shaping.config.schema import Config, IdentitySource, RewardConfig
from shaping.data.think_tags import extract_thinking, validate_think_tags
from shaping.errors import ShapingError
from shaping.inference import ChatResponse, ModelRegistry
from shaping.inference.cache import ResponseCache, complete_cached
from shaping.inference.embeddings import load_embedder, paired_similarity
from shaping.inference.rubric import check_rubric, normalized_score, parse_assessment, rubric_messages

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]
UNITS = ("tokens", "chars")


def completion_text(completion: Any) -> str:
    """A TRL completion's text: a string (standard format) or a list of messages (conversational)."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion)


def length_band(min: int, max: int, unit: str = "tokens") -> RewardFn:
    def reward(completions: list[Any], completion_ids: list[list[int]], **_: Any) -> list[float | None]:
        if unit == "tokens":
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c)) for c in completions]
        return [1.0 if min <= n <= max else 0.0 for n in lengths]

    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}: choose tokens or chars")
    if not 0 <= min <= max:
        raise ValueError(f"min={min}, max={max}: need 0 <= min <= max")
    return reward


def eos(within: int, eos_token_ids: Iterable[int] = ()) -> RewardFn:
    stops = set(eos_token_ids)

    def reward(completion_ids: list[list[int]], **_: Any) -> list[float | None]:
        return [1.0 if ids and ids[-1] in stops and len(ids) <= within else 0.0 for ids in completion_ids]

    if within < 1:
        raise ValueError(f"within={within}: must be at least 1 token")
    if not stops:
        raise ValueError("the tokenizer has no end-of-sequence token")
    return reward


def think_tags(required: bool = False) -> RewardFn:
    def reward(completions: list[Any], **_: Any) -> list[float | None]:
        scores: list[float | None] = []
        for completion in completions:
            text = completion_text(completion)
            ok = validate_think_tags(text)[0] and (not required or bool(extract_thinking(text)))
            scores.append(1.0 if ok else 0.0)
        return scores

    return reward


def _step(kwargs: dict[str, Any]) -> str:
    state = kwargs.get("trainer_state")
    return f"step {state.global_step + 1}" if state is not None else "an unknown step"


class _ModelReward:
    """What the judge and identity_agreement rewards share: the model registry, the response cache (opened
    in the thread that first asks: TRL's event loop thread) and the count of replies scored 0 because the
    model's answer was missing or unreadable."""

    name = ""

    def __init__(self, cfg: Config, root: Path | None) -> None:
        self.root = root or Path.cwd()
        self.registry = ModelRegistry(cfg.models, cfg.seed, self.root)
        self.cache_dir = cfg.train.reward_cache_dir
        self._cache: ResponseCache | None = None
        self._cache_thread: int | None = None
        self.unscored = 0  # over the run so far

    def _check_model(self, name: str, key: str) -> None:
        if name not in self.registry.specs:
            known = ", ".join(sorted(self.registry.specs)) or "none"
            raise ShapingError(f"{key}={name!r}: not in the model registry (models: {known}); add models.{name}")
        self.registry.system_prompt(name)  # now, not at the first step: a missing sysprompt_file names its key

    def cache(self) -> ResponseCache | None:
        if self.cache_dir is None:
            return None
        if self._cache is None or self._cache_thread != threading.get_ident():  # sqlite: one thread per connection
            self._cache = ResponseCache(self.root / self.cache_dir / f"{self.name}.sqlite")
            self._cache_thread = threading.get_ident()
        return self._cache

    def count(self, unscored: int, total: int, what: str, first: str, kwargs: dict[str, Any]) -> None:
        """Log this batch's share of unscored replies (DVCLive: rewards/<name>/unparseable) and warn, with
        the count, when there are any."""
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and total:
            log_metric(f"rewards/{self.name}/unparseable", unscored / total)
        if unscored:
            self.unscored += unscored
            log.warning(
                "reward %s at training %s: %d of %d %s scored 0 (%d so far this run); first: %s",
                self.name,
                _step(kwargs),
                unscored,
                total,
                what,
                self.unscored,
                first,
            )

    def close(self) -> None:
        self.registry.close()


class JudgeReward(_ModelReward):
    """train=grpo's `judge` reward (see the module's docstring)."""

    name = "judge"

    def __init__(self, cfg: Config, root: Path | None = None) -> None:
        super().__init__(cfg, root)
        judge = cfg.train.judge
        if judge is None:
            raise ShapingError(
                "train.judge: null; the judge reward reads its model and rubric there, e.g. "
                "train.judge={model: judge, rubric: ${eval.judge.rubric}, ...} (conf/train/grpo.yaml sets it)"
            )
        self.low, self.high = check_rubric(judge.rubric, "train.judge.rubric")
        self._check_model(judge.model, "train.judge.model")
        if judge.max_new_tokens < 1:
            raise ShapingError(f"train.judge.max_new_tokens={judge.max_new_tokens}: must be at least 1")
        self.cfg = judge
        self.criteria = [c.name for c in judge.rubric.criteria]
        self.options = {"temperature": judge.temperature, "max_new_tokens": judge.max_new_tokens}

    async def __call__(
        self, prompts: list[Any], completions: list[Any], reference: list[str] | None = None, **kwargs: Any
    ) -> list[float | None]:
        references: list[str | None] = [None] * len(completions)
        if self.cfg.show_reference and reference is not None:
            references = [r or None for r in reference]
        conversations = [
            rubric_messages(self.cfg.rubric, _messages(p), completion_text(c), r)
            for p, c, r in zip(prompts, completions, references, strict=True)
        ]
        responses = await complete_cached(self.registry, self.cfg.model, conversations, self.options, self.cache())
        _all_failed(responses, f"models.{self.cfg.model} (train.judge.model)")
        scores: list[float | None] = []
        problems: list[str] = []
        for response in responses:
            value = None
            if response.is_success:
                assessment = parse_assessment(response.text or "", self.criteria, self.low, self.high)
                value = normalized_score(assessment, self.low, self.high)
                if value is None:
                    problems.append(f"{'; '.join(assessment.problems)} in {(response.text or '')[:80]!r}")
            else:
                problems.append(f"request failed: {response.error}")
            scores.append(0.0 if value is None else value)
        first = problems[0] if problems else ""
        self.count(len(problems), len(responses), f"answers of models.{self.cfg.model}", first, kwargs)
        return scores


class IdentityAgreementReward(_ModelReward):
    """train=grpo's `identity_agreement` reward (see the module's docstring)."""

    name = "identity_agreement"

    def __init__(self, cfg: Config, root: Path | None = None) -> None:
        super().__init__(cfg, root)
        identity = cfg.train.identity
        if identity is None:
            raise ShapingError(
                "train.identity: null; the identity_agreement reward reads its teacher and embedding model there "
                "(conf/train/grpo.yaml sets it)"
            )
        if identity.source == IdentitySource.teacher:
            self._check_model(identity.teacher, "train.identity.teacher")
            if identity.max_new_tokens < 1:
                raise ShapingError(f"train.identity.max_new_tokens={identity.max_new_tokens}: must be at least 1")
        threshold = identity.similarity_threshold
        if threshold is not None and not -1 <= threshold <= 1:
            raise ShapingError(f"train.identity.similarity_threshold={threshold}: a cosine, from -1 to 1 (or null)")
        load_embedder(identity.embedding_model, "train.identity.embedding_model")  # now: a missing one says so
        self.cfg = identity
        self.options = {"temperature": identity.temperature, "max_new_tokens": identity.max_new_tokens}

    async def __call__(
        self, prompts: list[Any], completions: list[Any], reference: list[str] | None = None, **kwargs: Any
    ) -> list[float | None]:
        if self.cfg.source == IdentitySource.reference:
            if reference is None:
                raise ShapingError("train.identity.source=reference: the rows carry no reply to compare with")
            references = [r or "" for r in reference]
            unscored = sum(not r.strip() for r in references)
            what = "replies of rows"
            first = "the row has no reply" if unscored else ""
        else:
            teacher = self.cfg.teacher
            asked = [_messages(p) for p in prompts]
            responses = await complete_cached(self.registry, teacher, asked, self.options, self.cache())
            _all_failed(responses, f"models.{teacher} (train.identity.teacher)")
            references = [r.text or "" if r.is_success else "" for r in responses]
            failed = [r.error or "an empty reply" for r in responses if not (r.text or "").strip()]
            unscored, what, first = len(failed), f"replies of models.{teacher}", failed[0] if failed else ""
        texts = [completion_text(c) for c in completions]
        where = "train.identity.embedding_model"
        # the embedding runs in a worker thread: the judge's requests go on meanwhile on the same event loop
        cosines = await asyncio.to_thread(paired_similarity, self.cfg.embedding_model, texts, references, where)
        self.count(unscored, len(completions), what, first, kwargs)
        threshold = self.cfg.similarity_threshold
        if threshold is None:
            return [max(0.0, c) for c in cosines]
        return [1.0 if c >= threshold else 0.0 for c in cosines]


def _messages(prompt: Any) -> list[dict[str, str]]:
    """A TRL prompt as chat messages: conversational already, or a plain string as one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in prompt]


def _all_failed(responses: list[ChatResponse], model: str) -> None:
    """Every request failing is the model down, not a bad reply: stop (the reward's wrapper names the step)."""
    errors = [r.error for r in responses if r.error is not None]
    if responses and len(errors) == len(responses):
        raise ShapingError(f"all {len(responses)} requests to {model} failed; the first: {errors[0]}")


def judge(cfg: Config, root: Path | None = None) -> JudgeReward:
    return JudgeReward(cfg, root)


def identity_agreement(cfg: Config, root: Path | None = None) -> IdentityAgreementReward:
    return IdentityAgreementReward(cfg, root)


# name -> factory(**args) -> reward(prompts, completions, completion_ids, **kwargs)
REGISTRY: dict[str, Callable[..., Any]] = {
    "length_band": length_band,
    "eos": eos,
    "think_tags": think_tags,
    "judge": judge,
    "identity_agreement": identity_agreement,
}
# what the trainer supplies to a registry factory, beside the config's args
SUPPLIED = {"eos": ("eos_token_ids",), "judge": ("cfg", "root"), "identity_agreement": ("cfg", "root")}


class NamedReward:
    """A reward as TRL calls it: `__name__` is the name TRL logs (`rewards/<name>/mean`); an exception in
    it becomes a ShapingError naming the reward, where it is configured and the training step."""

    def __init__(self, name: str, where: str, fn: Callable[..., Any]) -> None:
        self.__name__ = name
        self.where = where
        self.fn = fn

    def error(self, err: Exception, kwargs: dict[str, Any]) -> ShapingError:
        return ShapingError(
            f"reward {self.__name__} ({self.where}) raised at training {_step(kwargs)}: {type(err).__name__}: {err}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        try:
            return self.fn(*args, **kwargs)
        except Exception as err:
            raise self.error(err, kwargs) from err

    def close(self) -> None:
        close = getattr(self.fn, "close", None)
        if close is not None:
            close()


class AsyncNamedReward(NamedReward):
    """An asynchronous reward (judge, identity_agreement, an `async def` callable): TRL sees a coroutine
    function (`__call__`) and awaits it on its event loop, together with the other asynchronous ones."""

    async def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:  # type: ignore[override]
        try:
            result: Awaitable[list[float | None]] = self.fn(*args, **kwargs)
            return await result
        except Exception as err:
            raise self.error(err, kwargs) from err


def load_callable(reference: str, where: str) -> Callable[..., Any]:
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ShapingError(f"{where}={reference!r}: cannot import module {module_name!r} ({err})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise ShapingError(f"{where}={reference!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ShapingError(f"{where}={reference!r}: {attr!r} is not callable")
    return fn


def _check_args(fn: Callable[..., Any], args: dict[str, Any], where: str, supplied: Iterable[str] = ()) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n in params if n not in supplied]
    for key in args:
        if key not in params or key in supplied:
            raise ShapingError(f"{where}.args.{key}: unknown argument; it takes {', '.join(names) or 'none'}")


def build_rewards(
    specs: list[RewardConfig],
    eos_token_ids: Iterable[int] = (),
    where: str = "train.rewards",
    cfg: Config | None = None,
    root: Path | None = None,
) -> tuple[list[NamedReward], list[float]]:
    """The reward functions of `train.rewards` and their weights; a bad entry names its key. `cfg` (the whole
    config: train.judge, train.identity, models, seed) is what judge and identity_agreement read; `root`
    is where the registry's relative paths and train.reward_cache_dir are (default: the working directory)."""
    if not specs:
        raise ShapingError(
            f"{where}: empty; train=grpo needs at least one reward, e.g. "
            "[{name: eos, weight: 1.0, args: {within: 48}}]"
        )
    rewards: list[NamedReward] = []
    weights: list[float] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        here = f"{where}[{i}]"
        name = str(spec.name)
        args = dict(spec.args or {})
        if name in REGISTRY:
            factory = REGISTRY[name]
            supplied = SUPPLIED.get(name, ())
            _check_args(factory, args, here, supplied)
            extra: dict[str, Any] = {"eos_token_ids": list(eos_token_ids)} if "eos_token_ids" in supplied else {}
            if "cfg" in supplied:
                if cfg is None:
                    raise ShapingError(f"{here}.name={name!r}: this reward needs the whole config (train, models)")
                extra.update(cfg=cfg, root=root)
            try:
                fn = factory(**args, **extra)
            except TypeError as err:
                raise ShapingError(f"{here}.args: {err}") from None
            except ValueError as err:
                raise ShapingError(f"{here}.args ({name}): {err}") from None
            label = name
        elif ":" in name:
            user = load_callable(name, f"{here}.name")
            _check_args(user, args, here)
            fn = functools.partial(user, **args) if args else user
            label = name.rsplit(":", 1)[1].rsplit(".", 1)[-1]
        else:
            raise ShapingError(
                f"{here}.name={name!r}: unknown reward; choose one of {', '.join(REGISTRY)} or a callable "
                "'pkg.module:function'"
            )
        if label in seen:
            raise ShapingError(
                f"{here}.name={name!r}: the same reward as {where}[{seen[label]}]; each reward once "
                "(TRL logs each one's mean under its name)"
            )
        seen[label] = i
        if not isinstance(spec.weight, int | float):
            raise ShapingError(f"{here}.weight={spec.weight!r}: must be a number")
        wrapper = AsyncNamedReward if _is_async(fn) else NamedReward
        rewards.append(wrapper(label, here, fn))
        weights.append(float(spec.weight))
    return rewards, weights


def _is_async(fn: Callable[..., Any]) -> bool:
    """As TRL tells (trl.trainer.utils.is_async_callable): a coroutine function, a partial of one, or an
    object whose __call__ is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
