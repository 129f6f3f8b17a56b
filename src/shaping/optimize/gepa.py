"""GEPA over the teacher's system prompt: `dspy.GEPA` evolves one instruction, the system prompt of a
one-field program (prompt -> reply), scored by a metric chosen in config (prompt.metric) on a
validation split of the identity prompts, with a reflection model proposing new candidates.

Two things make it run on any model, a tiny local one included:
- the student's adapter (prompt.adapter=system) sends the candidate as the system message and takes the
  whole reply as the output field; DSPy's own adapters (chat, json) ask for field markers that a small
  model never writes (AdapterParseError), a real instruction-tuned model can use them;
- the proposer asks the reflection model in plain text for a new prompt in a fenced block, reads it as
  GEPA's own proposer does (the fenced block, else the whole reply), and keeps the current prompt when
  the reply is empty, too short (prompt.min_instruction_chars) or the request failed: a junk reply is
  a candidate that does not change, never a crash.
DSPy's LM cache (prompt.cache_dir, on disk) answers every request it has seen: a re-run with the same
inputs makes no LM call.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shaping.config.schema import PromptConfig, RubricConfig
from shaping.data.transforms import import_dspy, to_dspy_examples
from shaping.errors import ShapingError
from shaping.io import iter_jsonl
from shaping.optimize.endpoints import Endpoint

log = logging.getLogger(__name__)

SIGNATURE = "prompt -> reply"
PREDICTOR = "self"  # the one predictor's name in dspy.Predict.named_predictors()
REFLECTION = (
    "I gave an assistant this system prompt:\n```\n{instruction}\n```\n\n"
    "Here are user messages, its replies and feedback on each:\n{examples}\n\n"
    "Write a better system prompt for the assistant. Keep what works and fix what the feedback asks for. "
    "Answer with the new system prompt alone, inside ``` fences."
)


@dataclass
class GepaOutcome:
    """What a run found: every candidate with its validation score, the best one, the budget used."""

    best_prompt: str
    best_index: int
    candidates: list[dict[str, Any]]  # {index, prompt, val_score, parents, metric_calls_at_discovery, ...}
    metric_calls: int
    max_metric_calls: int
    wall_s: float
    train: int
    val: int
    proposals: dict[str, int] = field(default_factory=dict)  # accepted / kept (junk or failed)

    @property
    def seed_score(self) -> float:
        return float(self.candidates[0]["val_score"])

    @property
    def best_score(self) -> float:
        return float(self.candidates[self.best_index]["val_score"])

    def metrics(self) -> dict[str, Any]:
        return {
            "seed_score": round(self.seed_score, 4),
            "best_score": round(self.best_score, 4),
            "improvement": round(self.best_score - self.seed_score, 4),
            "best_index": self.best_index,
            "candidates": len(self.candidates),
            "metric_calls": self.metric_calls,
            "max_metric_calls": self.max_metric_calls,
            "wall_s": round(self.wall_s, 2),
            "train": self.train,
            "val": self.val,
            "proposals": dict(self.proposals),
        }


def load_examples(cfg: PromptConfig, seed: int) -> list[dict[str, str]]:
    """The prompts (and references, where given) GEPA works on: a seeded sample of prompt.max_prompts."""
    source = Path(cfg.prompts)
    rows: list[dict[str, str]] = []
    if source.is_dir():
        files = sorted(source.glob("*.txt"))
    elif source.is_file():
        files = [source]
    else:
        raise ShapingError(f"prompt.prompts: {source} not found; a folder of *.txt, a .txt or a .jsonl")
    for file in files:
        if file.suffix == ".jsonl":
            for n, row in iter_jsonl(file):
                if not isinstance(row, dict) or not str(row.get("prompt") or "").strip():
                    raise ShapingError(f"{file}:{n}: needs a non-empty `prompt` (and `reference` for some metrics)")
                rows.append({k: str(v) for k, v in row.items() if k in ("prompt", "reference") and v is not None})
        else:
            lines = file.read_text(encoding="utf-8").splitlines()
            rows.extend({"prompt": line.strip()} for line in lines if line.strip())
    if cfg.references:
        refs = {}
        for n, row in iter_jsonl(Path(cfg.references)):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or "reference" not in row:
                raise ShapingError(f"{cfg.references}:{n}: needs `prompt` and `reference`")
            refs[row["prompt"].strip()] = str(row["reference"])
        for row in rows:
            if row["prompt"] in refs:
                row["reference"] = refs[row["prompt"]]
    if cfg.metric in ("agreement", "contains"):
        rows = [r for r in rows if r.get("reference")]
        if not rows:
            raise ShapingError(
                f"prompt.metric={cfg.metric}: no prompt has a reference; set prompt.references to a .jsonl of "
                "{prompt, reference} (or give `reference` in a prompts .jsonl)"
            )
    random.Random(seed).shuffle(rows)
    return rows[: cfg.max_prompts] if cfg.max_prompts else rows


def split_examples(
    rows: list[dict[str, str]], val_fraction: float
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, validation): GEPA reflects on train and scores candidates on validation."""
    if not 0 < val_fraction < 1:
        raise ShapingError(f"prompt.val_fraction={val_fraction}: must be between 0 and 1, e.g. 0.5")
    if len(rows) < 2:
        raise ShapingError(f"prompt.prompts: {len(rows)} prompt(s); GEPA needs at least 2 (train and validation)")
    n_val = min(len(rows) - 1, max(1, round(len(rows) * val_fraction)))
    return rows[n_val:], rows[:n_val]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def extract_instruction(reply: str) -> str:
    """GEPA's reading of a proposal: the text inside the first and last ``` fence (a language tag
    dropped), else the reply without a stray fence."""
    text = reply.strip()
    start, end = text.find("```"), text.rfind("```")
    if start != -1 and end > start:
        inner = text[start + 3 : end]
        return re.sub(r"^[^\s`]*\n", "", inner, count=1).strip()
    return re.sub(r"^```[^\n]*\n?|```$", "", text).strip()


def reflection_prompt(instruction: str, examples: list[dict[str, Any]], max_chars: int | None) -> str:
    """The plain-text request for a new prompt; with max_chars, the current prompt and the examples are
    clipped (two thirds of the room for the prompt) so that a short-context model can read it."""

    def text(value: Any) -> str:  # DSPy's reflective records hold {field: value} dicts (or an error string)
        if isinstance(value, dict):
            return " / ".join(str(v) for v in value.values())
        return str(value)

    def render(items: list[dict[str, Any]]) -> str:
        return "\n".join(
            f"- User: {text(ex.get('Inputs', ''))}\n  Reply: {text(ex.get('Generated Outputs', ''))}\n"
            f"  Feedback: {text(ex.get('Feedback', ''))}"
            for ex in items
        )

    examples_text = render(examples)
    full = REFLECTION.format(instruction=instruction, examples=examples_text)
    if max_chars is None or len(full) <= max_chars:
        return full
    room = max(0, max_chars - len(REFLECTION.format(instruction="", examples="")))
    instruction_room = min(len(instruction), room * 2 // 3)
    return REFLECTION.format(
        instruction=_clip(instruction, instruction_room), examples=_clip(examples_text, room - instruction_room)
    )


class RobustProposer:
    """A GEPA instruction proposer (dspy.GEPA's `instruction_proposer`) that never fails the run:
    see the module docstring. Counts what it accepted and what it kept."""

    def __init__(self, lm: Any, min_chars: int, max_chars: int | None) -> None:
        self.lm = lm
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.counts = {"accepted": 0, "kept": 0}

    def __call__(
        self,
        candidate: dict[str, str],
        reflective_dataset: dict[str, list[dict[str, Any]]],
        components_to_update: list[str],
    ) -> dict[str, str]:
        out = {}
        for name in components_to_update:
            current = candidate[name]
            request = reflection_prompt(current, list(reflective_dataset.get(name, [])), self.max_chars)
            try:
                replies = self.lm(request)
                reply = replies[0] if replies else ""
                reply = reply.get("text", "") if isinstance(reply, dict) else reply
            except Exception as err:  # a failed request (context too long, server error): keep the prompt
                log.warning("optimize_prompt: the reflection request failed (%s); the prompt is kept", err)
                reply = ""
            proposal = extract_instruction(reply or "")
            if len(proposal) < self.min_chars:
                self.counts["kept"] += 1
                log.info("optimize_prompt: unusable proposal (%d chars); the prompt is kept", len(proposal))
                out[name] = current
            else:
                self.counts["accepted"] += 1
                out[name] = proposal
        return out


def make_metric(
    cfg: PromptConfig,
    *,
    judge: Any = None,
    rubric: RubricConfig | None = None,
    embedding_model: str | None = None,
) -> Callable[..., Any]:
    """GEPA's metric: (gold, pred, trace, pred_name, pred_trace) -> dspy.Prediction(score in [0, 1], feedback)."""
    dspy = import_dspy()

    def reply_of(pred: Any) -> str:
        return str(getattr(pred, "reply", "") or "").strip()

    if cfg.metric == "adherence":
        from shaping.evaluation.metrics.adherence import load_facts, stated

        facts = load_facts(cfg.facts_file)

        def score(gold: Any, reply: str) -> tuple[float, str]:
            found = stated(reply, facts)
            missing = [f for f in facts if f not in found]
            note = f"States {', '.join(found) or 'none of the facts'}; misses {', '.join(missing) or 'nothing'}."
            return len(found) / len(facts), note

    elif cfg.metric == "contains":

        def score(gold: Any, reply: str) -> tuple[float, str]:
            hit = str(gold.reference).strip().lower() in reply.lower()
            return float(hit), "Contains the expected answer." if hit else f"Should say: {gold.reference}"

    elif cfg.metric == "agreement":
        from shaping.inference.embeddings import similarity

        model = str(embedding_model)

        def score(gold: Any, reply: str) -> tuple[float, str]:
            cosine = float(similarity(model, [reply], [str(gold.reference)])[0, 0]) if reply else 0.0
            return max(0.0, cosine), f"Similarity {cosine:.2f} to a good reply: {_clip(str(gold.reference), 300)}"

    elif cfg.metric == "judge":
        from shaping.inference.rubric import check_rubric, normalized_score, parse_assessment, rubric_messages

        if judge is None or rubric is None:
            raise ShapingError("prompt.metric=judge: needs the judge model (eval.judge.model) and eval.judge.rubric")
        low, high = check_rubric(rubric)
        names = [c.name for c in rubric.criteria]

        def score(gold: Any, reply: str) -> tuple[float, str]:
            messages = rubric_messages(rubric, [{"role": "user", "content": gold.prompt}], reply)
            try:
                text = (judge(messages=messages) or [""])[0]
            except Exception as err:
                return 0.0, f"The judge failed: {err}"
            value = normalized_score(parse_assessment(str(text or ""), names, low, high), low, high)
            if value is None:
                return 0.0, "The judge's reply could not be read."
            return value, _clip(str(text), 600)

    else:
        raise ShapingError(f"prompt.metric={cfg.metric}: one of adherence, agreement, judge, contains")

    def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        reply = reply_of(pred)
        if not reply:
            return dspy.Prediction(score=0.0, feedback="The reply is empty.")
        value, feedback = score(gold, reply)
        return dspy.Prediction(score=float(value), feedback=feedback)

    return metric


def system_prompt_adapter(dspy: Any) -> Any:
    """A DSPy adapter for any chat model: the signature's instructions are the system message, the input
    field(s) the user message, and the whole reply is the one output field (no field markers)."""

    class SystemPromptAdapter(dspy.Adapter):
        def _user(self, signature: Any, values: dict[str, Any]) -> str:
            names = list(signature.input_fields)
            if len(names) == 1:
                return str(values[names[0]])
            return "\n\n".join(f"{n}: {values[n]}" for n in names)

        def format(self, signature: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
            (output,) = signature.output_fields
            messages = [{"role": "system", "content": signature.instructions}]
            for demo in demos:
                if all(n in demo for n in signature.input_fields) and output in demo:
                    messages.append({"role": "user", "content": self._user(signature, demo)})
                    messages.append({"role": "assistant", "content": str(demo[output])})
            messages.append({"role": "user", "content": self._user(signature, inputs)})
            return messages

        def parse(self, signature: Any, completion: str) -> dict[str, Any]:
            (output,) = signature.output_fields
            return {output: completion.strip()}

    return SystemPromptAdapter()


def make_lm(dspy: Any, endpoint: Endpoint, cache: bool, seed: int) -> Any:
    """A DSPy LM over the endpoint; every request carries the run's `seed` (OpenAI's field), so a
    sampled reply depends on the request and the seed alone where the server honours it (shaping.serve
    and vLLM do): a re-run without the cache scores the same candidates the same."""
    return dspy.LM(
        f"openai/{endpoint.model}",
        api_base=endpoint.api_base,
        api_key=endpoint.api_key,
        temperature=endpoint.temperature,
        max_tokens=endpoint.max_tokens,
        cache=cache,
        num_retries=2,
        seed=seed,
    )


def run_gepa(
    cfg: PromptConfig,
    *,
    seed: int,
    student: Endpoint,
    reflection: Endpoint,
    judge: Endpoint | None = None,
    rubric: RubricConfig | None = None,
    embedding_model: str | None = None,
) -> GepaOutcome:
    """Optimise the system prompt in cfg.seed_file; every candidate is recorded with its validation score."""
    dspy = import_dspy()
    seed_file = Path(cfg.seed_file)
    if not seed_file.is_file():
        raise ShapingError(f"prompt.seed_file: {seed_file} not found; GEPA starts from it")
    seed_prompt = seed_file.read_text(encoding="utf-8").strip()
    if not seed_prompt:
        raise ShapingError(f"prompt.seed_file: {seed_file} is empty")
    if (cfg.auto is None) == (cfg.max_metric_calls is None):
        raise ShapingError(
            f"prompt.auto={cfg.auto}, prompt.max_metric_calls={cfg.max_metric_calls}: set exactly one "
            "(auto: light | medium | heavy)"
        )
    if cfg.auto is not None and cfg.auto not in ("light", "medium", "heavy"):
        raise ShapingError(f"prompt.auto={cfg.auto}: one of light, medium, heavy (or null with max_metric_calls)")
    train_rows, val_rows = split_examples(load_examples(cfg, seed), cfg.val_fraction)
    fields = ["prompt", "reply"]
    trainset = to_dspy_examples(
        [{**r, "reply": r.get("reference", "")} for r in train_rows], SIGNATURE, fields[:1], "reply", "train"
    )
    valset = to_dspy_examples(
        [{**r, "reply": r.get("reference", "")} for r in val_rows], SIGNATURE, fields[:1], "reply", "validation"
    )
    for example, row in zip([*trainset, *valset], [*train_rows, *val_rows], strict=True):
        example.reference = row.get("reference", "")

    # the LM cache on disk, fresh in memory (a second run in this process reads the disk)
    if cfg.cache:
        Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
    dspy.configure_cache(enable_disk_cache=cfg.cache, enable_memory_cache=cfg.cache, disk_cache_dir=cfg.cache_dir)
    student_lm = make_lm(dspy, student, cfg.cache, seed)
    reflection_lm = make_lm(dspy, reflection, cfg.cache, seed)
    judge_lm = make_lm(dspy, judge, cfg.cache, seed) if judge is not None else None
    adapter = {
        "system": system_prompt_adapter(dspy),
        "chat": dspy.ChatAdapter(),
        "json": dspy.JSONAdapter(),
    }[str(cfg.adapter)]
    metric = make_metric(cfg, judge=judge_lm, rubric=rubric, embedding_model=embedding_model)
    proposer = RobustProposer(reflection_lm, cfg.min_instruction_chars, cfg.reflection_max_chars)
    program = dspy.Predict(dspy.Signature(SIGNATURE, seed_prompt))
    optimizer = dspy.GEPA(
        metric=metric,
        auto=cfg.auto,
        max_metric_calls=cfg.max_metric_calls if cfg.auto is None else None,
        reflection_minibatch_size=cfg.reflection_minibatch_size,
        instruction_proposer=proposer,
        num_threads=cfg.num_threads,
        track_stats=True,
        seed=seed,
    )
    started = time.monotonic()
    with dspy.context(lm=student_lm, adapter=adapter):
        best = optimizer.compile(program, trainset=trainset, valset=valset)
    wall = time.monotonic() - started
    details = best.detailed_results
    candidates = []
    for i, candidate in enumerate(details.candidates):
        prompt = dict(candidate.named_predictors())[PREDICTOR].signature.instructions
        candidates.append(
            {
                "index": i,
                "prompt": prompt,
                "val_score": float(details.val_aggregate_scores[i]),
                "val_scores": [float(v) for v in _ordered(details.val_subscores[i])],
                "parents": [p for p in details.parents[i] if p is not None] if details.parents[i] else [],
                "metric_calls_at_discovery": int(details.discovery_eval_counts[i]),
                "seed": i == 0,
            }
        )
    best_index = int(details.best_idx)
    best_prompt = dict(best.named_predictors())[PREDICTOR].signature.instructions
    for c in candidates:
        c["best"] = c["index"] == best_index
    return GepaOutcome(
        best_prompt=best_prompt,
        best_index=best_index,
        candidates=candidates,
        metric_calls=int(details.total_metric_calls or 0),
        max_metric_calls=int(optimizer.max_metric_calls or 0),
        wall_s=wall,
        train=len(trainset),
        val=len(valset),
        proposals=dict(proposer.counts),
    )


def _ordered(subscores: Any) -> list[float]:
    if isinstance(subscores, dict):
        return [subscores[k] for k in sorted(subscores)]
    return list(subscores)


def write_outcome(outcome: GepaOutcome, out_dir: Path, prompt_file: Path) -> None:
    """prompt.md (the best prompt), candidates.jsonl (every candidate, its validation score), metrics.json."""
    from shaping.io import write_jsonl

    out_dir.mkdir(parents=True, exist_ok=True)
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text(outcome.best_prompt.strip() + "\n", encoding="utf-8")
    write_jsonl(out_dir / "candidates.jsonl", outcome.candidates)
    (out_dir / "metrics.json").write_text(json.dumps(outcome.metrics(), indent=2) + "\n", encoding="utf-8")
