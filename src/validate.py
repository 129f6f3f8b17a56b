"""Stage validate: the gate between synthesis and training. Bad data stops the DAG here.

    python src/validate.py                          # by hand, under outputs/
    python src/validate.py validation.quality.min_samples=50
    python src/validate.py --skip-validation        # debug only: split even if the gate fails
    dvc repro validate

Streams every source (data/synth/<pipeline>/samples.jsonl, a .jsonl path or dataset://jsonl/<path>
in dataset.sources, or an hf:// dataset or trace://langfuse/ traces converted to chat rows in a
temporary file; see shaping.data.sources) and checks each row: JSON, UTF-8, BOM, CRLF, the dataset.schema rules,
conversation structure and think tags (or preference pairs), optional token length; then the
quality checks (volume, error-like replies, duplicates, near-duplicates, distinct-2, reply
length, upstream __ERROR__ share) and the data-contract tests in validation.tests.path.
Writes <paths.validated_dir>/report.json either way, and {train,eval}.jsonl only when the
whole gate passes.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shaping.config import Config
from shaping.data import Gate, choose_split, write_split
from shaping.data.sources import Loaded, materialize, parse_sources
from shaping.data.validation import RowError, iter_rows
from shaping.errors import ShapingError
from shaping.io import atomic_write_bytes, write_json
from shaping.stage import StageContext, run_stage

log = logging.getLogger("shaping.validate")
# what the split keeps; a chat row's optional `rejected` reply makes it a preference pair (train=dpo), its
# optional `tools` are the function schemas its tool calls were made against
FIELDS = {"chat": ("id", "messages", "rejected", "tools"), "preference": ("id", "prompt", "chosen", "rejected")}
DATASET_ENV = "SHAPING_DATASET_FILES"  # what tests in validation.tests.path read


@dataclass
class SourceFile:
    """A file the gate scans: a pipeline's samples, a .jsonl source, or an hf:// source materialised."""

    path: Path
    upstream: int = 0  # its pipeline's __ERROR__ record count
    loaded: Loaded | None = None  # set for an hf:// or trace:// source

    @property
    def name(self) -> str:
        """How reports name it: the source's URI for an hf:// source (its file is temporary)."""
        return self.loaded.source.uri if self.loaded else self.path.as_posix()


def source_files(cfg: Config, scratch: Path) -> list[SourceFile]:
    """The file to scan for every dataset source; hf:// sources are written to `scratch` as rows of
    dataset.format (trace:// sources as chat rows)."""
    if not cfg.dataset.sources:
        raise ShapingError("dataset.sources: empty; name at least one pipeline, .jsonl file or hf:// dataset")
    files = []
    for i, source in enumerate(parse_sources(cfg.dataset.sources)):
        if source.kind == "jsonl":
            files.append(SourceFile(Path(source.path)))
        elif source.kind in ("hf", "trace"):
            path = scratch / f"source-{i}.jsonl"
            with atomic_write_bytes(path) as out:
                loaded = materialize(source, f"dataset.sources[{i}]", cfg.dataset.columns, out, cfg.dataset.format)
            log.info("%s: %d rows (%s, fingerprint %s)", source.uri, loaded.rows, loaded.format, loaded.fingerprint)
            files.append(SourceFile(path, loaded=loaded))
        else:
            folder = Path(cfg.paths.synth_dir) / source.path
            errors = folder / "errors.jsonl"
            upstream = sum(1 for line in errors.open("rb") if line.strip()) if errors.is_file() else 0
            files.append(SourceFile(folder / "samples.jsonl", upstream))
    return files


def relabel(gate: Gate, sources: list[SourceFile]) -> None:
    """Errors in a materialised hf:// source name its URI and row index; a row no converter could read
    is one error, the converter's, in place of what the gate said about its placeholder line."""
    by_path = {s.path.as_posix(): s.loaded for s in sources if s.loaded}
    if not by_path:
        return
    errors: list[RowError] = []
    for error in gate.errors:
        loaded = by_path.get(error.file)
        if loaded is None:
            errors.append(error)
        elif error.line not in loaded.unconvertible:
            errors.append(RowError(loaded.source.uri, error.line, error.field, error.message, row=error.line - 1))
    for loaded in by_path.values():
        for line, problem in loaded.unconvertible.items():
            field, _, message = problem.partition(": ")
            errors.append(RowError(loaded.source.uri, line, field, message, row=line - 1))
    gate.errors[:] = errors


def run_data_tests(cfg: Config, files: list[Path]) -> dict[str, Any]:
    """pytest.main over validation.tests.path, in process; tests read the data from $SHAPING_DATASET_FILES."""
    tests = cfg.validation.tests
    if not tests.path:
        return {"path": None, "exit_code": 0, "passed": True}
    if not Path(tests.path).exists():
        raise ShapingError(f"validation.tests.path={tests.path}: not found")
    import pytest

    args = [
        tests.path,
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        *tests.args,
    ]
    if tests.markers:
        args += ["-m", tests.markers]
    os.environ[DATASET_ENV] = os.pathsep.join(str(f) for f in files)
    code = int(pytest.main(args))
    # 5 = no tests collected: an empty contract is not a failure
    return {"path": tests.path, "markers": tests.markers, "exit_code": code, "passed": code in (0, 5)}


def count_truncated(cfg: Config, gate: Gate, files: list[Path]) -> list[dict[str, Any]]:
    """Rows whose chat-templated length exceeds dataset.max_tokens (the trainer would cut them)."""
    limit = cfg.dataset.max_tokens
    if limit is None or cfg.dataset.format != "chat":
        return []
    from shaping.hub import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    found = []
    for path in files:
        valid = set(gate.valid.get(path.as_posix(), []))
        for lineno, row in iter_rows(path, valid) if valid else ():
            try:
                length = len(tokenizer.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=True))
            except Exception as err:  # jinja's errors: a template that cannot render this row (e.g. null content)
                raise ShapingError(
                    f"{path.as_posix()}:{lineno}: dataset.max_tokens: model {cfg.model.name_or_path}'s chat template "
                    f"cannot render this row ({type(err).__name__}: {err}); use a model whose template takes its "
                    "messages (tool calls need one that renders tool_calls and tool messages) or drop the row"
                ) from None
            if length > limit:
                found.append({"file": path.as_posix(), "line": lineno, "tokens": length})
    return found


def main(ctx: StageContext) -> None:
    with tempfile.TemporaryDirectory(prefix="shaping-sources-") as scratch:
        gate_and_split(ctx, Path(scratch))


def gate_and_split(ctx: StageContext, scratch: Path) -> None:
    cfg = ctx.cfg
    out_dir = ctx.out(cfg.paths.validated_dir)
    sources = source_files(cfg, scratch)
    files = [s.path for s in sources]
    ctx.record.add_inputs([s.path for s in sources if s.loaded is None and s.path.is_file()])
    ctx.record.add_inputs([s.loaded.source.path for s in sources if s.loaded and s.loaded.source.local])
    hf_sources = [s.loaded.record() for s in sources if s.loaded]
    try:
        gate = Gate(cfg.dataset, cfg.validation.quality, cfg.validation.workers)
    except ValueError as err:
        raise ShapingError(str(err)) from None
    for source in sources:
        gate.scan(source.path, source.upstream)
    relabel(gate, sources)
    names = {s.path.as_posix(): s.name for s in sources}
    truncated = [{**t, "file": names.get(t["file"], t["file"])} for t in count_truncated(cfg, gate, files)]
    checks = {
        "invalid_rows": {
            "value": len({(e.file, e.line) for e in gate.errors}),
            "max": 0,
            "passed": not gate.errors,
        },
        **gate.quality.checks(gate.upstream_share()),
        "truncated_share": {
            "value": round(len(truncated) / max(1, gate.valid_rows), 4),
            "max": cfg.validation.quality.max_truncated_share,
            "passed": len(truncated) / max(1, gate.valid_rows) <= cfg.validation.quality.max_truncated_share,
        },
    }
    pytest_result = run_data_tests(cfg, files)
    checks["data_tests"] = {"value": pytest_result["exit_code"], "passed": pytest_result["passed"]}
    passed = all(c["passed"] for c in checks.values())
    skipped = cfg.validation.skip and not passed
    train_n = eval_n = 0
    if passed or skipped:
        train, held_out = choose_split(gate.valid, cfg.dataset.eval_fraction, cfg.seed, cfg.dataset.max_examples)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (
            atomic_write_bytes(out_dir / "train.jsonl") as t,
            atomic_write_bytes(out_dir / "eval.jsonl") as e,
        ):
            train_n, eval_n = write_split(files, train, held_out, FIELDS[cfg.dataset.format], t, e)
    report: dict[str, Any] = {
        "passed": passed,
        "skipped_validation": skipped,
        "rows": {
            "read": sum(s.lines for s in gate.sources.values()),
            "valid": gate.valid_rows,
            "invalid": checks["invalid_rows"]["value"],
            "train": train_n,
            "eval": eval_n,
        },
        "checks": checks,
        "reply_length": gate.quality.length_stats(),
        "sources": {names.get(name, name): vars(stats) for name, stats in gate.sources.items()},
        "data_tests": pytest_result,
        "truncated": truncated,
        "errors": [vars(e) for e in gate.errors],
    }
    write_json(out_dir / "report.json", report)
    ctx.record.details = {"passed": passed, "skipped_validation": skipped, **report["rows"]}
    if hf_sources:  # what each hub or local dataset was read at: revision, fingerprint
        ctx.record.details["sources"] = hf_sources
    print_summary(report, gate, cfg.validation.show_errors)
    if skipped:
        log.warning(
            "VALIDATION FAILED AND WAS SKIPPED (validation.skip=true): training on data that failed the "
            "gate; the run records say so"
        )
    elif not passed:
        failed = ", ".join(name for name, c in checks.items() if not c["passed"])
        raise ShapingError(f"validation failed ({failed}); full report: {out_dir / 'report.json'}")


def print_summary(report: dict[str, Any], gate: Gate, show: int) -> None:
    rows = report["rows"]
    print(
        f"\nvalidate: {rows['read']} rows read, {rows['valid']} valid, {rows['invalid']} invalid "
        f"-> train {rows['train']}, eval {rows['eval']}"
    )
    for name, check in report["checks"].items():
        bound = " ".join(f"{k} {check[k]}" for k in ("min", "max") if check.get(k) is not None)
        print(f"  {'ok  ' if check['passed'] else 'FAIL'} {name:<22} {check['value']!s:<10} {bound}")
    for error in gate.errors[:show]:
        print(f"  {error}")
    if len(gate.errors) > show:
        print(f"  ... and {len(gate.errors) - show} more errors in report.json")


if __name__ == "__main__":
    if "--skip-validation" in sys.argv:
        sys.argv.remove("--skip-validation")
        sys.argv.append("validation.skip=true")
    run_stage(
        "validate",
        sections=["seed", "dataset", "validation"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.validated_dir}/run.json",
    )
