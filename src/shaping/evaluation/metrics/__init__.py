"""Built-in metrics; importing this package registers them."""

from shaping.evaluation.metrics import judge, loss, samples, think_tags

__all__ = ["judge", "loss", "samples", "think_tags"]
