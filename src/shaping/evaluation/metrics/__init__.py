"""Built-in metrics; importing this package registers them."""

from shaping.evaluation.metrics import claims, judge, loss, samples, think_tags

__all__ = ["claims", "judge", "loss", "samples", "think_tags"]
