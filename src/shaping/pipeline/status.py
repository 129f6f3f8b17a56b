"""`python src/synthesize.py --status`: is each synthesis output CURRENT, STALE or PARTIAL, and why.

DVC's `dvc status` answers this for the `synthesize@<name>` stages; this reads the manifests
themselves, so it also covers runs made by hand (`python src/synthesize.py pipeline=...` under
outputs/<date>/<time>/, `python pipelines/<file>.py` under outputs/synth/). A manifest records
the pipeline file's hash, each file dependency's files and hashes, each model's fingerprint and
the limit; each is compared with the checkout and the composed config as they are now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shaping.config import Config
from shaping.inference import ModelRegistry
from shaping.pipeline.base import model_fingerprint
from shaping.tracking import hash_inputs, sha256_file


@dataclass
class RunStatus:
    pipeline: str
    folder: str
    state: str  # CURRENT | STALE | PARTIAL | MISSING | INTERRUPTED
    reasons: list[str] = field(default_factory=list)
    samples: int | None = None
    errors: int = 0

    def lines(self) -> list[str]:
        counts = f" ({self.samples} samples, {self.errors} errors)" if self.samples is not None else ""
        return [f"{self.pipeline} [{self.folder}]: {self.state}{counts}", *(f"  - {r}" for r in self.reasons)]


def _diff_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    changed = [p for p in old if p in new and old[p] != new[p]]
    removed = [p for p in old if p not in new]
    added = [p for p in new if p not in old]
    parts = [
        f"{label} {', '.join(sorted(paths)[:3])}{' ...' if len(paths) > 3 else ''}"
        for label, paths in (("changed:", changed), ("removed:", removed), ("added:", added))
        if paths
    ]
    return parts


def _diff_model(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    if old == new:
        return None
    if "error" in new:
        return new["error"]
    what = [k for k in ("backend", "model_id", "system_prompt_sha256") if old.get(k) != new.get(k)]
    what = [{"model_id": "model", "system_prompt_sha256": "system prompt"}.get(k, k) for k in what]
    old_options, new_options = old.get("options") or {}, new.get("options") or {}
    what += [
        f"{k} {old_options.get(k)!r} -> {new_options.get(k)!r}"
        for k in sorted(set(old_options) | set(new_options))
        if old_options.get(k) != new_options.get(k)
    ]
    return ", ".join(what) or "changed"


def check_manifest(path: Path, registry: ModelRegistry, root: Path) -> RunStatus:
    folder = _relative(path.parent, root)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return RunStatus(path.parent.name, folder, "STALE", [f"{path}: unreadable manifest ({err}); run again"])
    status = RunStatus(
        manifest.get("pipeline") or path.parent.name,
        folder,
        "CURRENT",
        samples=manifest.get("samples"),
        errors=manifest.get("errors", 0),
    )
    stale = status.reasons
    source = manifest.get("pipeline_file")
    if source is None:
        stale.append("made before manifests recorded the pipeline's code: run again")
    elif not (root / source).is_file():
        stale.append(f"pipeline file {source} no longer exists")
    elif sha256_file(root / source) != manifest.get("pipeline_sha256"):
        stale.append(f"pipeline code changed ({source})")
    for name, dep in (manifest.get("file_deps") or {}).items():
        if not isinstance(dep, dict) or "path" not in dep:
            stale.append(f"file '{name}': made before manifests recorded dependency paths: run again")
            continue
        now = {_relative(Path(p), root): h for p, h in hash_inputs([root / dep["path"]]).items()}
        differences = _diff_files(dep.get("files") or {}, now)
        if differences:
            stale.append(f"file '{name}' content changed ({'; '.join(differences)})")
    for name, dep in (manifest.get("model_deps") or {}).items():
        if not isinstance(dep, dict) or "fingerprint" not in dep:
            stale.append(f"model '{name}': made before manifests recorded model fingerprints: run again")
            continue
        difference = _diff_model(dep["fingerprint"], model_fingerprint(registry, dep["name"]))
        if difference:
            stale.append(f"model '{name}' (models.{dep['name']}) changed: {difference}")
    if stale:
        status.state = "STALE"
    elif manifest.get("partial"):
        status.state = "PARTIAL"
        status.reasons.append(
            f"partial run (synth.limit={manifest.get('limit')}, {status.samples} samples); "
            "run without synth.limit for full data"
        )
    return status


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def find_manifests(cfg: Config, root: Path) -> list[Path]:
    """DVC's outputs, `python pipelines/<file>.py` outputs, and the newest hand run per pipeline."""
    synth_dir = Path(cfg.paths.synth_dir)
    found = sorted((root / synth_dir).glob("*/manifest.json"))
    found += sorted((root / "outputs" / "synth").glob("*/manifest.json"))
    newest: dict[str, Path] = {}
    hand_runs = [] if synth_dir.is_absolute() else [f"outputs/*/*/{synth_dir}", f"multirun/*/*/*/{synth_dir}"]
    for pattern in hand_runs:
        for path in root.glob(f"{pattern}/*/manifest.json"):
            name = path.parent.name
            if name not in newest or path.stat().st_mtime > newest[name].stat().st_mtime:
                newest[name] = path
    return found + sorted(newest.values())


def status_report(cfg: Config, root: Path) -> list[RunStatus]:
    registry = ModelRegistry(cfg.models, seed=cfg.seed, root=root)
    statuses = [check_manifest(path, registry, root) for path in find_manifests(cfg, root)]
    synth_dir = root / cfg.paths.synth_dir
    for name in cfg.synth.pipelines:
        if not (synth_dir / name / "manifest.json").is_file():
            statuses.append(
                RunStatus(
                    name, _relative(synth_dir / name, root), "MISSING", [f"never run: dvc repro synthesize@{name}"]
                )
            )
    if cfg.synth.cache_dir:
        for journal in sorted((root / cfg.synth.cache_dir).glob("*.journal.jsonl")):
            with journal.open("rb") as handle:
                finished = sum(1 for _ in handle)
            name = journal.name.removesuffix(".journal.jsonl").rsplit(".", 1)[0]  # <name>.<fingerprint>
            statuses.append(
                RunStatus(
                    name,
                    _relative(journal, root),
                    "INTERRUPTED",
                    [f"a run stopped with {finished} records finished; run it again to resume"],
                )
            )
    return statuses
