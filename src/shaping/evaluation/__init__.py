"""Evaluation: assistant-token loss and perplexity, deterministic generation samples."""

from shaping.evaluation.loss import assistant_loss, encode_for_loss
from shaping.evaluation.samples import greedy_replies, prompts_of, sample_stats

__all__ = ["assistant_loss", "encode_for_loss", "greedy_replies", "prompts_of", "sample_stats"]
