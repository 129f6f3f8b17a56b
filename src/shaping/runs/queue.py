"""The runs of a repository, read from and written to DVC's experiment queue.

A run is one queued `dvc exp run`; its id is the experiment's name. This module keeps no state DVC
does not, except the names of runs cancelled through it (one empty file each under
`.dvc/tmp/shaping-runs/cancelled/`), since DVC records a cancelled task as failed; a restarted
service reads everything back from the repository."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shaping.config import compose
from shaping.errors import ShapingError
from shaping.stage import CHECKPOINT_DIR_ENV

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ENDED = ("succeeded", "failed", "cancelled")
TRAIN_STAGE = "train"
HISTORY_DIR = "dvclive/train/plots/metrics"  # DVCLive's per-step history of the train stage: <metric>.tsv
DVC_STATUS = {"Queued": "queued", "Running": "running", "Success": "succeeded", "Failed": "failed"}
# DVC gives up on its repository lock after 3 s; a queue worker starting a run holds it longer while
# it copies the workspace, so a command that meets the lock tries again for up to this long
LOCK_WAIT_S = 60.0
LOCK_HELD = "Unable to acquire lock"  # DVC's message (dvc/lock.py)


def entry_id(entry: dict[str, Any]) -> str:
    """A DVC queue entry's run id: its experiment name, else its short rev."""
    return str(entry.get("name") or entry["rev"][:7])


def history_rows(text: str, metric: str) -> list[tuple[int, float]]:
    """The (step, value) rows of one DVCLive history file (`step<TAB><metric>`), in its order."""
    rows = []
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        try:  # a row being written as it is read is incomplete: skip it
            rows.append((int(row["step"]), float(row[metric])))
        except (KeyError, TypeError, ValueError):
            continue
    return rows


class RunError(ShapingError):
    """A request the queue refuses: `code` says why (the HTTP layer maps it to a status)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Run:
    id: str
    name: str
    status: str
    rev: str | None = None  # the queued experiment's stash commit
    submitted_at: str | None = None
    reason: str | None = None  # why a failed run failed
    stage: str | None = None  # the stage now running (from the run's events)
    heartbeat: dict[str, Any] | None = None  # the newest DVCLive step or stage event, with its time
    overrides: list[str] | None = None  # what it was submitted with, when submitted through this service
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self, full: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not full:
            out.pop("params")
            out.pop("metrics")
        return out


class RunQueue:
    """The repository at `root`; `workers` queue workers are started on each submission if not running."""

    def __init__(self, root: Path, workers: int = 1) -> None:
        self.root = Path(root).resolve()
        if not (self.root / "dvc.yaml").is_file() or not (self.root / "conf").is_dir():
            raise ShapingError(f"{self.root}: no dvc.yaml and conf/ here; start the service in a shaping repository")
        self.workers = max(1, workers)
        self._lock = threading.Lock()  # DVC's repo objects and its queue's stash are not for concurrent use
        self.state_dir = self.root / ".dvc" / "tmp" / "shaping-runs"  # the one folder of this module's own
        self._cancelled = self.state_dir / "cancelled"
        self._submissions = self.state_dir / "submissions"  # <id>.json: the overrides a run was submitted with
        self.checkpoint_dir = self.state_dir / "checkpoints"  # the queue's runs' checkpoints (SHAPING_CHECKPOINT_DIR)
        self._shown: tuple[str, list[dict[str, Any]]] | None = None  # (_experiments_key(), what it read)

    # commands ----------------------------------------------------------------------------------
    @staticmethod
    def _dvc_command(*args: str) -> tuple[list[str], dict[str, str]]:
        """The argv of `dvc <args>` and its environment: this interpreter's environment first on PATH."""
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        return [os.path.join(bin_dir, "dvc"), *args], env

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`dvc <args>` in the repository, tried again while DVC's repository lock is held (up to
        LOCK_WAIT_S); a failure is a RunError quoting DVC's message."""
        argv, env = self._dvc_command(*args)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            proc = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, env=env)
            if proc.returncode == 0 or LOCK_HELD not in proc.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if check and proc.returncode != 0:
            raise RunError(
                "dvc_failed", f"dvc {args[0]} {args[1] if len(args) > 1 else ''} failed: {proc.stderr.strip()[-2000:]}"
            )
        return proc

    def worker_count(self) -> int:
        """DVC's queue workers alive for this repository, read from the process table: DVC names each
        `dvc-exp-<hash of its queue folder>-<n>@localhost`. (Asking them over celery's broker takes a
        1 s broadcast, and a worker still starting does not answer it: `dvc queue start` then starts
        a second one, which takes the next queued run at once.)"""
        import psutil

        wdir = os.path.join(str(self.root), ".dvc", "tmp", "exps", "celery")  # DVC's celery_queue.wdir
        tag = f"dvc-exp-{hashlib.sha256(wdir.encode('utf-8')).hexdigest()[:6]}-"
        count = 0
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.info.get("status") != psutil.STATUS_ZOMBIE and "queue-worker" in cmdline:
                count += any(part.startswith(tag) for part in cmdline)
        return count

    def start_workers(self) -> None:
        """`dvc queue start -j <workers>` unless that many run already. A worker it spawns keeps the
        output streams it was given, so they go to a file: a pipe would hold this call until it exits."""
        if self.worker_count() >= self.workers:
            return
        log_file = self.state_dir / "queue-start.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        argv, env = self._dvc_command("queue", "start", "-j", str(self.workers))
        # each queued run trains in a fresh workspace: its checkpoints go to one folder of the repository's
        # instead, so that a cancelled run's re-submission (the same overrides) resumes from them
        env[CHECKPOINT_DIR_ENV] = str(self.checkpoint_dir)
        with log_file.open("w", encoding="utf-8") as out:
            code = subprocess.call(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if code != 0:
            text = log_file.read_text(encoding="utf-8").strip()[-2000:]
            raise RunError("dvc_failed", f"dvc queue start failed: {text}")

    def validate(self, overrides: list[str]) -> None:
        """Compose conf/ with the overrides, as `dvc exp run -S` will: a bad key is a RunError naming it."""
        for override in overrides:
            if not isinstance(override, str) or not override.strip() or override.lstrip().startswith("-"):
                raise RunError("invalid_override", f"overrides: {override!r} is not a Hydra override (key=value)")
        try:
            compose(overrides, config_dir=self.root / "conf")
        except ShapingError as err:
            raise RunError("invalid_override", str(err)) from None
        except Exception as err:  # Hydra's own errors name the key: "Could not override 'lora.rr'..."
            raise RunError("invalid_override", f"{type(err).__name__}: {err}".splitlines()[0]) from None

    def submit(self, overrides: list[str], name: str | None = None) -> Run:
        """Queue `dvc exp run -S <override>...` named `name` (a fresh `run-<hex>` if None) and make sure the
        queue's workers run; nothing is queued when an override or the name is refused."""
        if name is not None and not NAME.match(name):
            raise RunError("invalid_name", f"name: {name!r}: letters, digits, '-' and '_' only (at most 64)")
        self.validate(overrides)
        experiments = self._experiment_names()
        with self._lock:
            taken = {run["name"] for run in self._status()}
            run_id = name or f"run-{uuid.uuid4().hex[:8]}"
            if run_id in taken or run_id in experiments:
                raise RunError("name_taken", f"name: a run or experiment named {run_id!r} exists already")
            args = ["exp", "run", "--queue", "--name", run_id]
            for override in overrides:
                args += ["-S", override]
            self.dvc(*args)
            self._submissions.mkdir(parents=True, exist_ok=True)
            (self._submissions / f"{run_id}.json").write_text(json.dumps({"overrides": overrides}), encoding="utf-8")
            self.start_workers()
        return Run(id=run_id, name=run_id, status="queued", overrides=overrides)

    def overrides(self, run_id: str) -> list[str] | None:
        """The overrides `run_id` was submitted with (None: it was queued by hand, not through this service)."""
        try:
            return list(json.loads((self._submissions / f"{run_id}.json").read_text(encoding="utf-8"))["overrides"])
        except (OSError, ValueError, KeyError):
            return None

    def retry(self, run_id: str, name: str | None = None) -> Run:
        """Submit a failed or cancelled run's overrides again, as `name` (`<id>-retry-<n>` if None); a
        cancelled run's retry resumes from its checkpoints."""
        run = self.get(run_id, full=False)
        if run.status not in ("failed", "cancelled"):
            raise RunError("not_retryable", f"run {run_id} is {run.status}: only failed or cancelled runs retry")
        overrides = self.overrides(run_id)
        if overrides is None:
            raise RunError("not_retryable", f"run {run_id} was not submitted through this service: no overrides known")
        if name is None:
            taken = {r.id for r in self.runs()} | self._experiment_names()
            base = re.sub(r"-retry-\d+$", "", run_id)[:50]
            name = next(f"{base}-retry-{n}" for n in range(1, 10_000) if f"{base}-retry-{n}" not in taken)
        return self.submit(overrides, name)

    def cancel(self, run_id: str) -> Run:
        """Remove a queued run from the queue (`dvc queue remove`), or kill a running one's processes."""
        run = self.get(run_id, full=False)
        if run.status not in ("queued", "running"):
            raise RunError("not_cancellable", f"run {run_id} is {run.status}: only queued or running runs cancel")
        self._cancelled.mkdir(parents=True, exist_ok=True)
        (self._cancelled / run_id).touch()
        with self._lock:
            removed = run.status == "queued" and self.dvc("queue", "remove", run_id, check=False).returncode == 0
        if not removed:  # running, or taken by a worker since its status was read
            self._kill(self.get(run_id, full=False))
        return Run(id=run_id, name=run_id, status="cancelled", rev=run.rev, submitted_at=run.submitted_at)

    def _kill(self, run: Run) -> None:
        """Stop a running run: SIGTERM to its executor (`dvc exp exec-run`) and every process under it,
        SIGKILL to any left after 10 s. Not `dvc queue kill`: it interrupts the executor's whole process
        group, which holds the queue worker too, and the worker then shuts down with the next run taken
        from the queue and never started (it would read `running` for ever)."""
        import psutil

        info = self.root / ".dvc" / "tmp" / "exps" / "run" / str(run.rev) / f"{run.rev}.json"
        try:
            executor = psutil.Process(int(json.loads(info.read_text(encoding="utf-8"))["pid"]))
            tree = [*executor.children(recursive=True), executor]
        except (OSError, ValueError, KeyError, psutil.Error):  # not started yet, or already gone
            with self._lock:
                self.dvc("queue", "kill", run.id, check=False)
            return
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    # reading -----------------------------------------------------------------------------------
    def _status(self) -> list[dict[str, Any]]:
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            return list(repo.experiments.celery_queue.status())

    def _experiment_names(self) -> set[str]:
        return {str(e.get("name")) for e in self._experiments()}

    def _experiments_key(self) -> str:
        """What `dvc exp show`'s finished experiments depend on: HEAD (their baseline) and the experiment refs
        (one per finished experiment, naming its commit, which holds its params and metrics)."""
        proc = subprocess.run(
            ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.root, capture_output=True, text=True)
        return f"{head.stdout}{proc.stdout}" if proc.returncode == 0 and head.returncode == 0 else ""

    def _experiments(self) -> list[dict[str, Any]]:
        """Every experiment of `dvc exp show --json`, each {name, rev, params, metrics}. `dvc exp show` takes
        seconds of CPU and the page asks every few seconds, so what it read is kept until HEAD or an
        experiment ref changes (`_experiments_key`): callers use the finished experiments' params, metrics and
        names (queued and running ones come from the queue's status). Run outside this queue's lock, and
        tried three times, a second apart: it also reads the queue's temporary workspaces, and fails for a
        moment while a worker sets one up ("directory '.dvc/tmp/exps/tmp.../.dvc' does not exist")."""
        key = self._experiments_key()
        shown = self._shown
        if key and shown is not None and shown[0] == key:
            return shown[1]
        for attempt in range(3):
            proc = self.dvc("exp", "show", "--json", check=attempt == 2)
            if proc.returncode == 0:
                break
            time.sleep(1)
        found = []
        for baseline in json.loads(proc.stdout or "[]"):
            for group in baseline.get("experiments") or []:
                for exp in group.get("revs") or []:
                    data = exp.get("data") or {}
                    found.append(
                        {
                            "name": exp.get("name"),
                            "rev": exp.get("rev"),
                            "params": {f: (v or {}).get("data", {}) for f, v in (data.get("params") or {}).items()},
                            "metrics": {f: (v or {}).get("data", {}) for f, v in (data.get("metrics") or {}).items()},
                        }
                    )
        if key and key == self._experiments_key():  # nothing finished while it read
            self._shown = (key, found)
        return found

    def runs(self, status: str | None = None) -> list[Run]:
        """Every run the queue knows, newest first; `status` keeps one kind."""
        if status is not None and status not in STATUSES:
            raise RunError("invalid_status", f"status: {status!r}: one of {', '.join(STATUSES)}")
        cancelled = {p.name for p in self._cancelled.iterdir()} if self._cancelled.is_dir() else set()
        with self._lock:
            entries, workers = self._status(), self.worker_count()
            # a cancelled run DVC still lists as queued (its removal raced a worker taking it, or a killed
            # run's message went back to the broker unacknowledged) leaves the queue now: never started again
            for entry in entries:
                if entry["status"] == "Queued" and entry_id(entry) in cancelled:
                    self.dvc("queue", "remove", str(entry.get("name") or entry["rev"]), check=False)
                    entry["status"] = "Failed"
            if not workers and any(e["status"] == "Queued" for e in entries):
                # a DVC worker may stop with runs still queued (after a kill, or treeverse/dvc#10562)
                self.start_workers()
        entries.sort(key=lambda e: e["timestamp"], reverse=True)
        runs = []
        for entry in entries:
            name = entry_id(entry)
            state = DVC_STATUS.get(str(entry["status"]), "failed")
            if name in cancelled and state != "succeeded":
                state = "cancelled"
            reason = self._lost(str(entry["rev"]), workers) if state == "running" else None
            if reason is not None:
                state = "failed"
            runs.append(
                Run(
                    id=name,
                    name=name,
                    status=state,
                    rev=entry["rev"],
                    submitted_at=entry["timestamp"].isoformat(),
                    reason=reason,
                )
            )
        # a queued run removed by cancel() is no longer in the queue: it is still a run that was cancelled
        known = {r.id for r in runs}
        runs += [Run(id=n, name=n, status="cancelled") for n in sorted(cancelled - known)]
        return [r for r in runs if status is None or r.status == status]

    def _lost(self, rev: str, workers: int) -> str | None:
        """Why a run DVC calls running never will finish, or None if it may: its executor's record (the
        pid and, once it has exited, the exit code the worker wrote) says whether its processes live."""
        import psutil

        info = self.root / ".dvc" / "tmp" / "exps" / "run" / rev / f"{rev}.json"
        try:
            record = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # taken from the queue, not started yet
            return None if workers else "its queue worker stopped after taking it from the queue, before it started"
        if record.get("returncode") is not None:  # exited; DVC records the outcome in a moment
            return None if record["returncode"] == 0 else f"it exited with code {record['returncode']}"
        try:
            alive = psutil.Process(int(record["pid"])).status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, KeyError, TypeError, ValueError):
            alive = False
        return None if alive else "its processes are gone (killed, e.g. SIGKILL, or the machine restarted) mid-run"

    def runs_full(self, status: str | None = None) -> list[Run]:
        """`runs()`, each succeeded one with its params and metrics (one `dvc exp show` for all)."""
        found = self.runs(status)
        if any(r.status == "succeeded" for r in found):
            shown = {e["name"]: e for e in self._experiments()}
            for run in found:
                if run.status == "succeeded" and run.id in shown:
                    run.params, run.metrics = shown[run.id]["params"], shown[run.id]["metrics"]
        for run in found:
            run.overrides = self.overrides(run.id)
        return found

    def config_groups(self) -> dict[str, Any]:
        """conf/'s config groups, each with its options and the one conf/config.yaml's defaults pick."""
        import yaml

        conf = self.root / "conf"
        defaults: dict[str, str] = {}
        for entry in (yaml.safe_load((conf / "config.yaml").read_text(encoding="utf-8")) or {}).get("defaults", []):
            if isinstance(entry, dict):
                defaults.update({str(k): str(v) for k, v in entry.items()})
        groups = {}
        for folder in sorted(p for p in conf.iterdir() if p.is_dir()):
            options = sorted(f.stem for f in folder.glob("*.yaml"))
            if options:
                groups[folder.name] = {"options": options, "default": defaults.get(folder.name)}
        return groups

    def get(self, run_id: str, full: bool = True) -> Run:
        run = next((r for r in self.runs() if r.id == run_id), None)
        if run is None:
            raise RunError("not_found", f"no run {run_id!r}")
        if run.status == "failed" and run.reason is None:
            run.reason = self.failure_reason(run)
        if full:
            run.overrides = self.overrides(run_id)
        if full and run.status == "succeeded":
            exp = next((e for e in self._experiments() if e["name"] == run_id), None)
            if exp is not None:
                run.params, run.metrics = exp["params"], exp["metrics"]
        return run

    def failure_reason(self, run: Run) -> str:
        """A failed run's reason: the last error its output names (a stage's `ERROR` line, DVC's
        `ERROR:`), else its last line."""
        path = self.log_file(run)
        if path is None:
            return "it failed before it started (no output)"
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [line for line in lines if line]
        errors = [line for line in lines if " ERROR " in line or line.startswith(("ERROR", "error:"))]
        return (errors or lines or ["it failed with no output"])[-1][-2000:]

    def log_file(self, run: Run) -> Path | None:
        """Where DVC's queue writes the run's output (what `dvc queue logs` prints), once it has started."""
        if run.rev is None:
            return None
        path = self.root / ".dvc" / "tmp" / "exps" / "run" / run.rev / f"{run.rev}.out"
        return path if path.is_file() else None

    def logs(self, run_id: str, tail: int | None = None) -> list[str]:
        """The run's output so far, the last `tail` lines if given (none while it is queued)."""
        path = self.log_file(self.get(run_id, full=False))
        if path is None:
            return []
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return lines[-tail:] if tail else lines

    def _stage_started(self, run: Run, stage: str) -> bool:
        """Whether DVC has printed `Running stage '<stage>':` in the run's output (it deletes the stage's
        old outputs first)."""
        path = self.log_file(run)
        return path is not None and f"Running stage '{stage}':" in path.read_text(encoding="utf-8", errors="replace")

    def run_info(self, run: Run) -> dict[str, Any]:
        """DVC's executor record of a started run: its workspace (root_dir) and, once done, its experiment ref."""
        if run.rev is None:
            return {}
        path = self.root / ".dvc" / "tmp" / "exps" / "run" / run.rev / f"{run.rev}.run"
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def history(self, run_id: str) -> dict[str, list[dict[str, float]]]:
        """The train stage's DVCLive history, {metric: [{step, value}, ...]}: read from the run's workspace
        while it runs, from its experiment commit once it has succeeded (empty before the first log step)."""
        run = self.get(run_id, full=False)
        info = self.run_info(run)
        files: dict[str, str] = {}
        if run.status == "succeeded" and info.get("result_ref"):
            ref = str(info["result_ref"])
            listed = subprocess.run(
                ["git", "ls-tree", "--name-only", f"{ref}:{HISTORY_DIR}"], cwd=self.root, capture_output=True, text=True
            ).stdout.split()
            for name in listed:
                if name.endswith(".tsv"):
                    files[name] = self.show(ref, f"{HISTORY_DIR}/{name}") or ""
        elif run.status == "running" and info.get("root_dir") and self._stage_started(run, TRAIN_STAGE):
            # (before its train stage starts, a run's workspace holds the baseline's committed curves)
            for path in sorted((Path(info["root_dir"]) / HISTORY_DIR).glob("*.tsv")):
                files[path.name] = path.read_text(encoding="utf-8")
        history: dict[str, list[dict[str, float]]] = {}
        for name, text in files.items():
            metric = name.removesuffix(".tsv")
            history[metric] = [{"step": step, "value": value} for step, value in history_rows(text, metric)]
        return history

    def result_ref(self, run_id: str) -> str:
        """The experiment commit of a succeeded run (what its artifacts are read from)."""
        run = self.get(run_id, full=False)
        ref = self.run_info(run).get("result_ref") if run.status == "succeeded" else None
        if not ref:
            raise RunError("not_found", f"run {run_id} is {run.status}: only a succeeded run has artifacts")
        return str(ref)

    def show(self, ref: str, path: str) -> str | None:
        """A file's text at a commit (`git show <ref>:<path>`), None if it is not there."""
        shown = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=self.root, capture_output=True, text=True)
        return shown.stdout if shown.returncode == 0 else None

    def ready(self) -> dict[str, Any]:
        """What /readyz reports: the repository readable and DVC's queue answering."""
        with self._lock:
            self._status()
        return {"repository": str(self.root), "dvc": "ok"}
