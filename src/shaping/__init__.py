"""shaping: synthesize data, validate it, LoRA fine-tune, evaluate, compare."""

__version__ = "0.1.0"
