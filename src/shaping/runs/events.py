"""Run events, derived from what a run itself writes, so they exist however the run was started
(`POST /runs` or `dvc exp run --queue` by hand) and a restarted service derives the same ones again.

Each event is a dict `{"id", "type", "v", "run", "time", "data"}`; its `id` (`<run>/<type>[/<key>]`)
is stable across restarts, which is what webhook delivery de-duplicates on. Where they come from:

| type | source |
|---|---|
| `run.queued` | DVC's queue entry (its time) |
| `run.started` | the run's queue log appears |
| `stage.started`, `stage.completed` | DVC's `Running stage '<name>':` lines in that log |
| `checkpoint.saved` | the train stage's `checkpoint saved: <folder> (step N)` log lines |
| `train.progress` | each new step of the train stage's DVCLive history (loss, learning rate, tokens/s) |
| `eval.completed` | `eval/metrics.json` in the run's workspace or experiment commit (headline metrics) |
| `run.succeeded`, `run.failed`, `run.cancelled` | the run's status (a failure with its reason) |

An event seen live is timed when it is seen (a DVCLive step: when its row is read); one derived
after the fact (a service started after the run) takes its source file's modification time.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shaping.runs.queue import ENDED, HISTORY_DIR, TRAIN_STAGE, Run, RunQueue, history_rows

log = logging.getLogger(__name__)

VERSION = 1  # the event types are shaping.runs.notify.EVENT_TYPES
STAGE_LINE = re.compile(r"^Running stage '([^']+)':")
CHECKPOINT_LINE = re.compile(r"checkpoint saved: (\S+) \(step (\d+)\)")
EVAL_METRICS = "eval/metrics.json"  # paths.eval_dir's metrics file, as conf/ names it
# a workspace starts with the baseline's committed (cache: false) metrics and curves; DVC deletes a
# stage's outputs before it prints `Running stage`, so each file is read only once its stage has started
EVAL_STAGE = "evaluate"
PROGRESS_METRICS = ("loss", "learning_rate", "grad_norm", "num_input_tokens_seen")
HEARTBEAT_TYPES = ("run.started", "stage.started", "stage.completed", "checkpoint.saved", "train.progress")


def iso(seconds: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if seconds is None else seconds, UTC).isoformat()


def make_event(run_id: str, kind: str, when: str, data: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    return {
        "id": f"{run_id}/{kind}" + (f"/{key}" if key is not None else ""),
        "type": kind,
        "v": VERSION,
        "run": run_id,
        "time": when,
        "data": data,
    }


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers eval.completed carries: each model's loss and the top-level scalars (gap_closed)."""
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, dict) and isinstance(value.get("loss"), int | float):
            out[f"{name}_loss"] = value["loss"]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


@dataclass
class RunWatch:
    """One run's events so far and where its sources were read up to."""

    run_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    stage: str | None = None
    started: set[str] = field(default_factory=set)  # the stages that have started
    ended: bool = False
    offset: int = 0
    pending: bytes = b""
    last_step: int = -1
    last_tokens: tuple[float, float] | None = None  # (seconds, tokens seen) at the last live progress event

    def add(self, kind: str, when: str, data: dict[str, Any], key: str | None = None) -> dict[str, Any] | None:
        event = make_event(self.run_id, kind, when, data, key)
        if event["id"] in self.ids:
            return None
        self.ids.add(event["id"])
        self.events.append(event)
        return event

    @property
    def heartbeat(self) -> dict[str, Any] | None:
        """The newest sign of life: a DVCLive step or a stage, checkpoint or start event, with its time."""
        beat = next((e for e in reversed(self.events) if e["type"] in HEARTBEAT_TYPES), None)
        return None if beat is None else {"time": beat["time"], "type": beat["type"], "data": beat["data"]}

    def update(self, queue: RunQueue, run: Run, live: bool) -> list[dict[str, Any]]:
        """The run's new events since the last call. `live`: the run is being watched as it goes (events
        are timed now), rather than read after the fact (timed by their source files)."""
        before = len(self.events)
        if run.submitted_at:
            self.add("run.queued", run.submitted_at, {"name": run.name})
        path = queue.log_file(run)
        if path is not None:
            stamp = iso() if live else iso(path.stat().st_mtime)
            self.add("run.started", stamp, {})
            self._read_log(path, stamp)
        info = queue.run_info(run)
        if run.status == "running" and info.get("root_dir"):
            self._workspace(Path(info["root_dir"]), live)
        if run.status in ENDED:
            self._end(queue, run, info)
        return self.events[before:]

    def _read_log(self, path: Path, stamp: str) -> None:
        with path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").split("\r")[-1].strip()
            if match := STAGE_LINE.match(line):
                self._stage_completed(stamp)
                self.stage = match.group(1)
                self.started.add(self.stage)
                self.add("stage.started", stamp, {"stage": self.stage}, key=self.stage)
            elif match := CHECKPOINT_LINE.search(line):
                step = int(match.group(2))
                self.add("checkpoint.saved", stamp, {"step": step, "path": match.group(1)}, key=str(step))

    def _stage_completed(self, stamp: str) -> None:
        if self.stage is not None:
            self.add("stage.completed", stamp, {"stage": self.stage}, key=self.stage)
            self.stage = None

    def _workspace(self, root: Path, live: bool) -> None:
        """A running run's DVCLive steps and eval metrics, from its workspace."""
        folder = root / HISTORY_DIR
        loss = folder / "loss.tsv"
        if TRAIN_STAGE in self.started and loss.is_file():
            texts = {m: (folder / f"{m}.tsv") for m in PROGRESS_METRICS}
            read = {m: p.read_text(encoding="utf-8") for m, p in texts.items() if p.is_file()}
            self._progress(read, iso() if live else iso(loss.stat().st_mtime), live)
        metrics = root / EVAL_METRICS
        if EVAL_STAGE in self.started and metrics.is_file():
            try:
                found = json.loads(metrics.read_text(encoding="utf-8"))
            except ValueError:  # being written
                return
            self.add("eval.completed", iso() if live else iso(metrics.stat().st_mtime), headline(found))

    def _progress(self, texts: dict[str, str], stamp: str, live: bool) -> None:
        columns = {m: dict(history_rows(t, m)) for m, t in texts.items()}
        steps = sorted(s for s in columns.get("loss", {}) if s > self.last_step)
        for step in steps:
            data: dict[str, Any] = {"step": step}
            for metric, rows in columns.items():
                if step in rows:
                    data["tokens" if metric == "num_input_tokens_seen" else metric] = rows[step]
            if live and "tokens" in data:
                now = time.monotonic()
                if self.last_tokens is not None and now > self.last_tokens[0] and step == steps[-1]:
                    data["tokens_per_second"] = round(
                        (data["tokens"] - self.last_tokens[1]) / (now - self.last_tokens[0])
                    )
                if step == steps[-1]:
                    self.last_tokens = (now, float(data["tokens"]))
            self.add("train.progress", stamp, data, key=str(step))
            self.last_step = step

    def _end(self, queue: RunQueue, run: Run, info: dict[str, Any]) -> None:
        stamp = iso()
        path = queue.log_file(run)
        if path is not None:
            stamp = iso(path.stat().st_mtime)
        if run.status == "succeeded":
            ref = info.get("result_ref")
            if ref:
                texts = {m: queue.show(str(ref), f"{HISTORY_DIR}/{m}.tsv") for m in PROGRESS_METRICS}
                self._progress({m: t for m, t in texts.items() if t}, stamp, live=False)
                shown = queue.show(str(ref), EVAL_METRICS)
                if shown:
                    self.add("eval.completed", stamp, headline(json.loads(shown)))
            self._stage_completed(stamp)
            self.add("run.succeeded", stamp, {})
        elif run.status == "cancelled":
            self.add("run.cancelled", stamp, {"stage": self.stage})
        else:
            self.add("run.failed", stamp, {"stage": self.stage, "reason": run.reason or queue.failure_reason(run)})
        self.ended = True


class EventHub:
    """Watches every run of `queue` from a thread (every `poll_s` seconds) and keeps their events in
    the order they were derived; `on_event` (a webhook notifier's publish) is called with each new one.
    The first poll reads what happened before the service started (not live)."""

    def __init__(
        self, queue: RunQueue, poll_s: float = 1.0, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.queue = queue
        self.poll_s = poll_s
        self.on_event = on_event
        self.watches: dict[str, RunWatch] = {}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polls = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shaping-runs-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the repository being rewritten under us: try again next time
                log.exception("deriving run events failed")
            self._stop.wait(self.poll_s)

    def poll(self) -> list[dict[str, Any]]:
        """One pass over every run: the events new since the last pass."""
        live = self._polls > 0
        self._polls += 1
        runs = sorted(self.queue.runs(), key=lambda r: r.submitted_at or "")
        new: list[dict[str, Any]] = []
        for run in runs:
            watch = self.watches.get(run.id) or RunWatch(run.id)
            if watch.ended:
                continue
            found = watch.update(self.queue, run, live)
            with self._lock:
                self.watches[run.id] = watch
                self.events.extend(found)
            new.extend(found)
        for event in new:
            if self.on_event is not None:
                self.on_event(event)
        return new

    @property
    def polled(self) -> int:
        return self._polls

    def since(self, index: int, run_id: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """The events after position `index` (of one run, if given) and the position to ask from next."""
        with self._lock:
            events = self.events[index:]
            end = len(self.events)
        return [e for e in events if run_id is None or e["run"] == run_id], end

    def watch(self, run_id: str) -> RunWatch | None:
        with self._lock:
            return self.watches.get(run_id)
