"""Built-in metrics; importing this package registers them."""

from shaping.evaluation.metrics import adherence, claims, identity, judge, loss, samples, think_tags

__all__ = ["adherence", "claims", "identity", "judge", "loss", "samples", "think_tags"]
