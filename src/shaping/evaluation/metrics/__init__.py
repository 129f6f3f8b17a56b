"""Built-in metrics; importing this package registers them."""

from shaping.evaluation.metrics import loss, samples, think_tags

__all__ = ["loss", "samples", "think_tags"]
