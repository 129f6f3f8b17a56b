"""Stage synthesize@<pipeline>: run one pipeline from pipelines/ and write its samples.

    python src/synthesize.py pipeline=identity_distillation               # by hand, under outputs/
    python src/synthesize.py pipeline=identity_distillation synth.limit=20 synth.annotate=false
    dvc repro synthesize@identity_distillation                            # as DVC runs it

Writes <paths.synth_dir>/<pipeline>/{samples.jsonl, errors.jsonl, manifest.json, run.json}.
"""

from __future__ import annotations

from shaping.config import find_repo_root
from shaping.errors import ShapingError
from shaping.pipeline import load_pipeline_class
from shaping.stage import StageContext, run_stage


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    if not cfg.pipeline:
        raise ShapingError(f"pipeline: not set; pass pipeline=<name> (one of synth.pipelines: {cfg.synth.pipelines})")
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
        k: result.manifest[k] for k in ("records", "samples", "errors", "errors_by_type", "requests_sent", "partial")
    }
    if result.samples == 0:
        raise ShapingError(f"{cfg.pipeline}: produced no samples ({result.errors} errors in {output_dir}/errors.jsonl)")


if __name__ == "__main__":
    run_stage(
        "synthesize",
        sections=["seed", "pipeline", "synth", "models"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.synth_dir}/{cfg.pipeline}/run.json",
    )
