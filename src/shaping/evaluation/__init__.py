"""Evaluation: a metric registry (loss, samples, think_tags, judge, claims, identity), guards,
baseline comparison, plot tables, and their helpers."""

from shaping.evaluation.baseline import check_baseline, check_baseline_config, metric_deltas, read_baseline
from shaping.evaluation.guards import check_guards
from shaping.evaluation.loss import assistant_loss, encode_for_loss
from shaping.evaluation.plots import plot_tables
from shaping.evaluation.registry import METRICS, EvalContext, check_metric_names, metric, run_metrics
from shaping.evaluation.samples import greedy_replies, prompts_of, sample_stats

__all__ = [
    "METRICS",
    "EvalContext",
    "assistant_loss",
    "check_baseline",
    "check_baseline_config",
    "check_guards",
    "check_metric_names",
    "encode_for_loss",
    "greedy_replies",
    "metric",
    "metric_deltas",
    "plot_tables",
    "prompts_of",
    "read_baseline",
    "run_metrics",
    "sample_stats",
]
