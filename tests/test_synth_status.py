"""`--status`: manifests compared with the checkout and the config as they are now."""

from __future__ import annotations

from pathlib import Path

from shaping.config import Config
from shaping.pipeline import RunStatus, load_pipeline_class, status_report

from .conftest import REPO
from .test_openai_backend import Endpoint
from .test_synth_engine import serve_model

PIPELINE = """
from shaping.pipeline import Pipeline, TrainingSample, model_request


class Notes(Pipeline):
    name = "notes"
    judge = Pipeline.model_dep("judge")
    notes = Pipeline.file_dep("{notes}")

    def run(self):
        words = self.notes.read().split()
        return self.run_task(self.ask, records=[{{"id": str(i), "word": w}} for i, w in enumerate(words)])

    def ask(self, record):
        reply = yield model_request([{{"role": "user", "content": record["word"]}}], model=self.judge)
        return TrainingSample(id=record["id"], messages=[{{"role": "assistant", "content": reply.get_text()}}])
"""


def statuses(cfg: Config, tmp_path: Path) -> dict[str, RunStatus]:
    """This test's entries (the checkout's own runs are listed too)."""
    return {s.folder.rsplit("/", 1)[-1]: s for s in status_report(cfg, REPO) if str(tmp_path) in s.folder}


def test_status_current_partial_stale_missing_interrupted(cfg: Config, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("alpha beta gamma")
    (tmp_path / "pipes").mkdir()
    source = tmp_path / "pipes" / "notes.py"
    source.write_text(PIPELINE.format(notes=notes))
    cfg.paths.synth_dir = str(tmp_path / "synth")
    cfg.synth.cache_dir = str(tmp_path / "cache")
    cfg.synth.pipelines = ["notes", "never_run"]
    with Endpoint() as url:
        serve_model(cfg, "judge", url, concurrency=2)
        cls = load_pipeline_class("notes", tmp_path / "pipes")
        cls(cfg, output_dir=tmp_path / "synth" / "notes").execute()
        cls(cfg, output_dir=tmp_path / "synth" / "first-two", limit=2).execute()
    found = statuses(cfg, tmp_path)
    assert (found["notes"].state, found["notes"].samples, found["notes"].reasons) == ("CURRENT", 3, [])
    assert found["first-two"].state == "PARTIAL"
    assert found["first-two"].reasons == [
        "partial run (synth.limit=2, 2 samples); run without synth.limit for full data"
    ]
    assert found["never_run"].state == "MISSING"
    assert found["never_run"].lines()[1] == "  - never run: dvc repro synthesize@never_run"

    notes.write_text("alpha beta delta")
    cfg.models["judge"].temperature = 0.9
    source.write_text(source.read_text() + "# edited\n")
    (tmp_path / "cache" / "notes.0123456789abcdef.journal.jsonl").write_text('{"key": 1}\n{"key": 2}\n')
    found = statuses(cfg, tmp_path)
    assert found["notes"].state == "STALE" and found["first-two"].state == "STALE"  # stale beats partial
    assert found["notes"].reasons == [
        f"pipeline code changed ({source})",
        f"file 'notes' content changed (changed: {notes})",
        "model 'judge' (models.judge) changed: temperature 0.7 -> 0.9",
    ]
    interrupted = found["notes.0123456789abcdef.journal.jsonl"]
    assert interrupted.pipeline == "notes" and interrupted.state == "INTERRUPTED"
    assert interrupted.reasons == ["a run stopped with 2 records finished; run it again to resume"]
