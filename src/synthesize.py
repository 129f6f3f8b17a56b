"""Stage synthesize@<pipeline>: run one pipeline from pipelines/ and write its samples.

    python src/synthesize.py pipeline=identity_distillation               # by hand, under outputs/
    python src/synthesize.py pipeline=identity_distillation synth.limit=20 synth.annotate=false
    python src/synthesize.py pipeline=identity_distillation --no-cache    # fresh calls, no resume
    python src/synthesize.py --status                                     # CURRENT / STALE / PARTIAL, why
    dvc repro synthesize@identity_distillation                            # as DVC runs it

Writes <paths.synth_dir>/<pipeline>/{samples.jsonl, errors.jsonl, manifest.json, run.json}.
A run stopped halfway (Ctrl-C, SIGKILL) resumes when run again: finished records come from the
journal, answered requests from the response cache (both under synth.cache_dir). Exits 1 when
more than synth.max_failure_rate of the records failed.
"""

from __future__ import annotations

import logging
import sys

from shaping.config import compose, find_repo_root
from shaping.errors import ShapingError
from shaping.pipeline import cli_overrides, load_pipeline_class, status_report
from shaping.stage import StageContext, run_stage

log = logging.getLogger("shaping")


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    if not cfg.pipeline:
        raise ShapingError(f"pipeline: not set; pass pipeline=<name> (one of synth.pipelines: {cfg.synth.pipelines})")
    if any(spec.backend == "tinker" for spec in cfg.models.values()):
        from shaping.integrations.tinker import sampling  # noqa: F401  registers models.*.backend=tinker
    root = find_repo_root()
    cls = load_pipeline_class(cfg.pipeline, root / "pipelines")
    output_dir = ctx.out(f"{cfg.paths.synth_dir}/{cfg.pipeline}")
    pipeline = cls(cfg, output_dir=output_dir)
    ctx.record.backend = ",".join(
        sorted({cfg.models[d.name].backend for d in cls.model_deps().values() if d.name in cfg.models})
    )
    ctx.record.add_inputs([d.resolve() for d in cls.file_deps().values()])
    result = pipeline.execute()
    ctx.record.details = {
        k: result.manifest[k]
        for k in ("records", "samples", "errors", "errors_by_type", "requests_sent", "cache_hits", "resumed", "partial")
    }
    if result.samples == 0:
        raise ShapingError(f"{cfg.pipeline}: produced no samples ({result.errors} errors in {output_dir}/errors.jsonl)")


def status(argv: list[str]) -> int:
    """Print every synthesis run's state; overrides (key=value) compose the config compared against."""
    try:
        cfg = compose(cli_overrides(argv))
        statuses = status_report(cfg, find_repo_root())
    except ShapingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for entry in statuses:
        print("\n".join(entry.lines()))
    if not statuses:
        print(f"no synthesis runs found (synth.pipelines: {cfg.synth.pipelines})")
    return 0


if __name__ == "__main__":
    if "--status" in sys.argv[1:]:
        sys.exit(status([a for a in sys.argv[1:] if a != "--status"]))
    try:
        # flags such as --no-cache become Hydra overrides, after --params <file> under DVC
        head = sys.argv[1:3] if sys.argv[1:2] == ["--params"] else []
        sys.argv[1:] = head + cli_overrides(sys.argv[1 + len(head) :])
    except ShapingError as err:
        sys.exit(f"error: {err}")
    run_stage(
        "synthesize",
        sections=["seed", "pipeline", "synth", "models"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.synth_dir}/{cfg.pipeline}/run.json",
    )
