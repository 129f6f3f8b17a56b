"""Built-in metrics; importing this package registers them."""

from shaping.evaluation.metrics import claims, identity, judge, loss, samples, think_tags

__all__ = ["claims", "identity", "judge", "loss", "samples", "think_tags"]
