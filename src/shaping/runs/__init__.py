"""Run control over HTTP: experiments submitted, followed and cancelled on DVC's own experiment queue
(`dvc exp run --queue`, `dvc queue start|logs|kill|remove`). `python -m shaping.runs serve`."""

from shaping.runs.queue import Run, RunError, RunQueue

__all__ = ["Run", "RunError", "RunQueue"]
