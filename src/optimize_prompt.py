"""Stage optimize_prompt@gepa (prompt=gepa): DSPy's GEPA optimises the teacher's system prompt.

    dvc exp run -S prompt=gepa                                   # this stage, then synthesize ... evaluate
    dvc exp run -S prompt=gepa -S prompt.max_metric_calls=60     # a larger budget
    python src/optimize_prompt.py prompt=gepa                    # by hand, under outputs/

Starts from prompt.seed_file (data/identity/identity.md) and scores candidates with prompt.metric on a
validation split of prompt.prompts; the student (prompt.student) and the reflection model
(prompt.reflection) are registry models reached over HTTP: an `hf` model is served for the run by
shaping.serve on 127.0.0.1, an `openai` one is called at its base_url. Writes prompt.file (the best
prompt, the teacher's system prompt from here on), candidates.jsonl (every candidate and its validation
score), metrics.json (seed vs best score, metric calls, wall time) and run.json beside it.
Needs the optional `dspy` extra: pip install -e '.[dspy]'.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shaping.config import find_repo_root
from shaping.errors import ShapingError
from shaping.optimize import model_endpoints, run_gepa
from shaping.optimize.gepa import write_outcome
from shaping.stage import StageContext, run_stage

log = logging.getLogger("shaping")


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    opt = cfg.prompt
    if opt.method != "gepa":
        raise ShapingError(f"prompt.method={opt.method}: nothing to optimise; run with prompt=gepa")
    prompt_file = ctx.out(opt.file)
    out_dir = prompt_file.parent
    names = [opt.student, opt.reflection]
    if opt.metric == "judge":
        names.append(cfg.eval.judge.model)
    with model_endpoints(cfg.models, names, find_repo_root(), log_dir=Path(opt.cache_dir) / "serve") as endpoints:
        outcome = run_gepa(
            opt,
            seed=cfg.seed,
            student=endpoints[opt.student],
            reflection=endpoints[opt.reflection],
            judge=endpoints[cfg.eval.judge.model] if opt.metric == "judge" else None,
            rubric=cfg.eval.judge.rubric,
            embedding_model=cfg.eval.embedding_model,
        )
        ctx.record.details = {
            **outcome.metrics(),
            "student": endpoints[opt.student].describe(),
            "reflection": endpoints[opt.reflection].describe(),
        }
    write_outcome(outcome, out_dir, prompt_file)
    ctx.record.add_inputs([Path(opt.seed_file), Path(opt.prompts)])
    log.info(
        "optimize_prompt: %d candidates, seed %.3f -> best %.3f (candidate %d), %d metric calls in %.0fs",
        len(outcome.candidates),
        outcome.seed_score,
        outcome.best_score,
        outcome.best_index,
        outcome.metric_calls,
        outcome.wall_s,
    )


if __name__ == "__main__":
    run_stage(
        "optimize_prompt",
        sections=["seed", "prompt", "models", "eval"],
        body=main,
        record_at=lambda cfg: f"{Path(cfg.prompt.file).parent}/run.json",
    )
