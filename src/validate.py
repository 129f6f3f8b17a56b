"""Stage validate: the gate between synthesis and training. Bad data stops the DAG here.

    python src/validate.py                          # by hand, under outputs/
    python src/validate.py dataset.min_samples=50
    dvc repro validate

Checks every row of data/synth/<source>/samples.jsonl (JSON, UTF-8, message structure, empty
content, duplicate ids), the volume, then splits the valid rows into train/eval with a fixed
seed. Writes <paths.validated_dir>/{train,eval}.jsonl only when the whole gate passes, and
report.json (every error with file, line and field, every check's figure) either way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shaping.data.validation import check_file, find_duplicate_ids, split_rows
from shaping.errors import ShapingError
from shaping.io import write_json, write_jsonl
from shaping.stage import StageContext, run_stage

log = logging.getLogger("shaping.validate")
SHOW_ERRORS = 20


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    out_dir = ctx.out(cfg.paths.validated_dir)
    files = [Path(cfg.paths.synth_dir) / source / "samples.jsonl" for source in cfg.dataset.sources]
    if not files:
        raise ShapingError("dataset.sources: empty; name at least one pipeline output")
    ctx.record.add_inputs([f for f in files if f.is_file()])
    rows, errors, lines = [], [], 0
    for file in files:
        result = check_file(file)
        rows.extend(result.rows)
        errors.extend(result.errors)
        lines += result.lines_read
    dupes = find_duplicate_ids(rows)
    checks = {
        "rows_read": {"value": lines, "passed": lines > 0},
        "invalid_rows": {"value": len({(e.file, e.line) for e in errors}), "passed": not errors},
        "duplicate_ids": {"value": len(dupes), "passed": not dupes},
        "min_samples": {
            "value": len(rows),
            "min": cfg.dataset.min_samples,
            "passed": len(rows) >= cfg.dataset.min_samples,
        },
    }
    passed = all(c["passed"] for c in checks.values())
    train, held_out = split_rows(rows, cfg.dataset.eval_fraction, cfg.seed) if passed else ([], [])
    if cfg.dataset.max_examples is not None:
        train = train[: cfg.dataset.max_examples]
    report = {
        "passed": passed,
        "valid_rows": len(rows),
        "train_rows": len(train),
        "eval_rows": len(held_out),
        "checks": checks,
        "errors": [vars(e) for e in errors]
        + [{"file": "", "line": 0, "field": "id", "message": f"duplicate {d}"} for d in dupes],
    }
    write_json(out_dir / "report.json", report)
    ctx.record.details = {k: report[k] for k in ("passed", "valid_rows", "train_rows", "eval_rows")}
    if not passed:
        failed = [name for name, c in checks.items() if not c["passed"]]
        shown = "\n  ".join(str(e) for e in errors[:SHOW_ERRORS])
        more = f"\n  ... and {len(errors) - SHOW_ERRORS} more" if len(errors) > SHOW_ERRORS else ""
        detail = f"\n  {shown}{more}" if errors else ""
        raise ShapingError(
            f"validation failed ({', '.join(failed)}); full report: {out_dir / 'report.json'}{detail}"
        )
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", held_out)
    log.info("validated %d rows: %d train, %d eval", len(rows), len(train), len(held_out))


if __name__ == "__main__":
    run_stage(
        "validate",
        sections=["seed", "dataset"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.validated_dir}/run.json",
    )
