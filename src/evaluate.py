"""Stage evaluate: base vs tuned (both without the system prompt) vs teacher (base with it).

    python src/evaluate.py                     # by hand, under outputs/
    python src/evaluate.py eval.samples.num_prompts=16 'eval.metrics=[loss]'
    python src/evaluate.py 'eval.guards=[{metric: tuned.loss, max: 2.5}]'
    python src/evaluate.py eval=full           # + judge, claims, identity
    python src/evaluate.py eval.baseline=main  # deltas against main's eval/metrics.json
    dvc repro evaluate

Runs the metrics named in eval.metrics (shaping.evaluation's registry: loss, samples,
think_tags, judge, claims, identity) and writes eval/metrics.json, e.g. {"base": {"loss",
"perplexity"}, "tuned": {...}, "teacher": {...}, "samples": {...}, "think_tags": {...}},
eval/samples.jsonl, per-sample records and every guard's and baseline check's result in
eval/details/, and plot tables in eval/plots/.
Then checks eval.guards and, with eval.baseline, eval.baseline_checks: a metric past its
bound, or worse than the baseline's past the tolerance, fails the stage, naming metric, bound
and value (metrics.json is written first, so nothing is lost).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

from transformers import PreTrainedModel

from shaping.config import Config
from shaping.device import pick_device
from shaping.errors import ShapingError
from shaping.evaluation import (
    EvalContext,
    check_baseline,
    check_baseline_config,
    check_guards,
    check_metric_names,
    metric_deltas,
    plot_tables,
    read_baseline,
    run_metrics,
)
from shaping.hub import compute_dtype, load_base_model, load_tokenizer, quantization_config, use_training_kernels
from shaping.inference import ModelRegistry
from shaping.io import read_jsonl, write_json
from shaping.stage import StageContext, run_stage

log = logging.getLogger("shaping.evaluate")


def main(ctx: StageContext) -> None:
    cfg = ctx.cfg
    check_metric_names(list(cfg.eval.metrics))
    if any(spec.backend == "tinker" for spec in cfg.models.values()):
        from shaping.integrations.tinker import sampling  # noqa: F401  registers models.*.backend=tinker
    eval_file = f"{cfg.paths.validated_dir}/eval.jsonl"
    adapter_dir = Path(cfg.paths.adapter_dir)
    rows = read_jsonl(eval_file)
    if not rows:
        raise ShapingError(f"{eval_file}: empty; raise dataset.eval_fraction")
    if not adapter_dir.is_dir():
        raise ShapingError(f"{adapter_dir}: no trained model; run `dvc repro train` first")
    ctx.record.add_inputs([eval_file])
    metrics_path = f"{cfg.paths.eval_dir}/metrics.json"
    baseline, source = None, ""
    if cfg.eval.baseline:  # a bad ref or setting fails here, before any model loads
        check_baseline_config(list(cfg.eval.baseline_checks), cfg.eval.baseline_tolerance)
        baseline, source = read_baseline(cfg.eval.baseline, metrics_path)
    ctx.record.backend = cfg.backend.name

    system = ModelRegistry(cfg.models).system_prompt("teacher") if "teacher" in cfg.models else None
    tinker_reference = adapter_dir / "tinker.json"
    if tinker_reference.is_file():  # trained with backend=tinker: the service's sampling clients are the models
        from shaping.integrations.tinker.evaluation import evaluate_reference

        eval_ctx, metrics = evaluate_reference(cfg, rows, tinker_reference, system, ctx.out(cfg.paths.eval_dir))
    else:
        tokenizer = load_tokenizer(cfg.model)
        tuned, separate_base, quantization = load_models(cfg, adapter_dir)
        eval_ctx = EvalContext(
            cfg=cfg,
            tokenizer=tokenizer,
            rows=rows,
            tuned=tuned,
            base=separate_base,
            system_prompt=system,
            out_dir=ctx.out(cfg.paths.eval_dir),
        )
        metrics = run_metrics(eval_ctx, list(cfg.eval.metrics))
        # which weights were measured: the tuned model on the base it trained on, the base (and the
        # teacher, the base prompted) on the unquantized weights users start from
        for name, measured in (("base", "none"), ("teacher", "none"), ("tuned", quantization)):
            if name in metrics or name == "tuned":
                metrics[name] = {**metrics.get(name, {}), "base_quantization": measured}
    guards = check_guards(metrics, list(cfg.eval.guards))
    if guards:
        metrics["guards"] = {"failed": sum(not g["passed"] for g in guards), "total": len(guards)}
    checks: list[dict[str, Any]] = []
    if baseline is not None:
        metrics["baseline_delta"] = metric_deltas(metrics, baseline)
        checks = check_baseline(metrics, baseline, list(cfg.eval.baseline_checks), cfg.eval.baseline_tolerance, source)
        log.info("baseline %s: %d of %d checks passed", source, sum(c["passed"] for c in checks), len(checks))
    for name, table in plot_tables(metrics).items():
        write_json(ctx.out(f"{cfg.paths.eval_dir}/plots/{name}"), table)
    write_json(ctx.out(metrics_path), metrics)
    write_json(
        eval_ctx.details_dir / "checks.json", {"guards": guards, "baseline": source or None, "baseline_checks": checks}
    )
    ctx.record.details = {"metrics": metrics, "guards": guards, "baseline": source or None, "baseline_checks": checks}
    for name in ("base", "teacher", "tuned"):
        if name in metrics and "loss" in metrics[name]:
            log.info("%-7s loss %.4f  perplexity %.2f", name, metrics[name]["loss"], metrics[name]["perplexity"])
    failed = [g["message"] for g in guards if not g["passed"]]
    regressed = [c["message"] for c in checks if not c["passed"]]
    problems = []
    if failed:
        problems.append("guard failed: " + "; ".join(failed))
    if regressed:
        problems.append("baseline regression: " + "; ".join(regressed))
    if problems:
        raise ShapingError("; ".join(problems))


def load_models(cfg: Config, adapter_dir: Path) -> tuple[PreTrainedModel, PreTrainedModel | None, str]:
    """(tuned, separate base or None, the tuned model's base quantization: nf4, fp4 or none).

    An adapter is scored on the base it was trained on, as `lora` in params.yaml says (what train
    read, and what export merges into): a QLoRA adapter over the base loaded in 4 bits again, since
    over the 16/32-bit weights it would be a model that was never trained. The base itself is
    scored unquantized, so QLoRA keeps two copies in memory: that one, and the 4-bit one (whose
    linear layers take an eighth of their fp32 size)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    check_trained_alike(cfg, adapter_dir)
    device = pick_device()
    base = load_base_model(cfg.model)
    base.to(device)  # type: ignore[arg-type]  # transformers types .to() through a decorator
    if not cfg.lora.enabled:
        full = AutoModelForCausalLM.from_pretrained(str(adapter_dir))
        full.to(device)  # type: ignore[arg-type]
        return full, base, "none"
    if cfg.lora.quantization is None:  # one copy in memory: base = the tuned model with its adapter disabled
        return cast(PreTrainedModel, PeftModel.from_pretrained(base, str(adapter_dir))), None, "none"
    # evaluate computes in fp32 throughout; an explicit lora.quantization.compute_dtype is kept.
    # bitsandbytes puts the 4-bit model on the GPU when there is one (no .to(): 4-bit weights don't move)
    quantized = load_base_model(
        cfg.model,
        quantization_config=quantization_config(cfg.lora.quantization, compute_dtype(cfg.lora.quantization, "fp32")),
    )
    use_training_kernels(quantized)
    tuned = cast(PreTrainedModel, PeftModel.from_pretrained(quantized, str(adapter_dir)))
    return tuned, base, cfg.lora.quantization.quant_type


def check_trained_alike(cfg: Config, adapter_dir: Path) -> None:
    """The adapter's run record (the train stage's, when there is one) says whether it was trained as
    QLoRA; `python src/evaluate.py lora=...` by hand over an adapter trained otherwise is refused."""
    record = adapter_dir / "run.json"
    if not record.is_file():
        return
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ShapingError(f"{record}: not valid JSON ({err.msg}); run `dvc repro train` again") from None
    trained = (saved.get("details") or {}).get("adapter") if isinstance(saved, dict) else None
    if trained is None:  # a failed run (its details are empty), or a backend that does not say
        return
    quantized = cfg.lora.enabled and cfg.lora.quantization is not None
    if (trained == "qlora") != quantized:
        raise ShapingError(
            f"{record}: this adapter was trained as {trained}, but lora.quantization is "
            f"{'set' if quantized else 'unset'} here, so it would be scored on a base it was not trained on; "
            "evaluate with the lora settings it was trained with (lora=qlora for QLoRA), or train it again"
        )


if __name__ == "__main__":
    run_stage(
        "evaluate",
        sections=["seed", "model", "lora", "models", "eval"],
        body=main,
        record_at=lambda cfg: f"{cfg.paths.eval_dir}/run.json",
    )
