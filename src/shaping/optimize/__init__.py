"""Prompt optimisation before weights: DSPy's GEPA evolves the teacher's system prompt (stage
optimize_prompt@gepa, `prompt=gepa`). DSPy is the optional `dspy` extra, imported only when a run starts."""

from shaping.optimize.endpoints import Endpoint, model_endpoints
from shaping.optimize.gepa import GepaOutcome, load_examples, run_gepa, split_examples

__all__ = ["Endpoint", "GepaOutcome", "load_examples", "model_endpoints", "run_gepa", "split_examples"]
