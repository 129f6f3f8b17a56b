"""Evaluation: a metric registry (loss, samples, think_tags, ...), guards, and their helpers."""

from shaping.evaluation.guards import check_guards
from shaping.evaluation.loss import assistant_loss, encode_for_loss
from shaping.evaluation.registry import METRICS, EvalContext, check_metric_names, metric, run_metrics
from shaping.evaluation.samples import greedy_replies, prompts_of, sample_stats

__all__ = [
    "METRICS",
    "EvalContext",
    "assistant_loss",
    "check_guards",
    "check_metric_names",
    "encode_for_loss",
    "greedy_replies",
    "metric",
    "prompts_of",
    "run_metrics",
    "sample_stats",
]
