"""shaping.runs.artifacts on a real DVC experiment in a tiny repo: the list is dvc.lock's, files and
folders download byte-identical from DVC's cache (cached outs) and from the commit (`cache: false`
outs), nothing else is served, and the workspace changing afterwards changes nothing."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from shaping.errors import ShapingError
from shaping.runs.artifacts import Artifact, ArtifactNotFound, list_artifacts, open_artifact

from .conftest import sh

SCRIPT = '''\
"""The stage: a folder out (a file in a subfolder, a run record), a file out, an uncached folder and
metrics, a persistent uncached checkpoint folder kept out of git; `copy <item>` for the foreach stage."""
import json, os, sys
import yaml

if sys.argv[1:2] == ["copy"]:
    os.makedirs("copies", exist_ok=True)
    with open(f"copies/{sys.argv[2]}.txt", "w") as f:
        f.write(f"copy of {sys.argv[2]}\\n")
    raise SystemExit
scale = yaml.safe_load(open("params.yaml"))["scale"]
os.makedirs("out/model/sub", exist_ok=True)
with open("out/model/weights.bin", "wb") as f:
    f.write(bytes((i * scale + i // 7) % 251 for i in range(70_001)))
with open("out/model/sub/notes.txt", "w") as f:
    f.write(f"scale {scale}\\n" * 40)
with open("out/model/run.json", "w") as f:
    json.dump({"stage": "make", "scale": scale}, f)
with open("out/summary.txt", "w") as f:
    f.write(f"summary at scale {scale}\\n")
os.makedirs("plots", exist_ok=True)
with open("plots/loss.tsv", "w") as f:
    f.write("step\\tloss\\n" + "".join(f"{s}\\t{1 / (s + scale):.4f}\\n" for s in range(5)))
os.makedirs("ckpt", exist_ok=True)
with open("ckpt/state.txt", "w") as f:
    f.write(f"checkpoint {scale}\\n")
with open("metrics.json", "w") as f:
    json.dump({"loss": 1 / scale, "scale": scale}, f)
'''

DVC_YAML = """\
stages:
  make:
    cmd: python make.py
    deps:
      - make.py
    params:
      - scale
    outs:
      - out/model
      - out/summary.txt
      - plots:
          cache: false
      - ckpt:
          persist: true
          cache: false
    metrics:
      - metrics.json:
          cache: false
  copy:
    foreach: [a, b]
    do:
      cmd: python make.py copy ${item}
      deps:
        - make.py
      outs:
        - copies/${item}.txt
"""

MODEL_FILES = ["run.json", "sub/notes.txt", "weights.bin"]


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout


def _download(repo: Path, ref: str, path: str) -> tuple[str, int | None, bytes]:
    media_type, length, chunks = open_artifact(repo, ref, path)
    return media_type, length, b"".join(chunks)


def _untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        out = {}
        for member in tar.getmembers():
            assert member.isfile(), member.name
            f = tar.extractfile(member)
            assert f is not None
            out[member.name] = f.read()
        return out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, bytes]]:
    """The repo, experiment e1's ref (`dvc exp run --name e1 -S scale=2`) and its files as it left them."""
    repo = tmp_path_factory.mktemp("artifacts-repo")
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "git", "config", "commit.gpgsign", "false")
    sh(repo, "dvc", "init", "-q")
    (repo / "make.py").write_text(SCRIPT)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("scale: 1\n")
    (repo / ".gitignore").write_text("/ckpt\n")  # the persistent checkpoints: never committed
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "pipeline")
    sh(repo, "dvc", "exp", "run", "--name", "e1", "-S", "scale=2")
    refs = _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").decode().split()
    (ref,) = [r for r in refs if r.endswith("/e1")]
    names = [f"out/model/{f}" for f in MODEL_FILES] + [
        "out/summary.txt",
        "plots/loss.tsv",
        "metrics.json",
        "copies/a.txt",
    ]
    files = {name: (repo / name).read_bytes() for name in names}  # the workspace as the run left it
    return repo, ref, files


def test_list_is_dvc_locks_outs(experiment: tuple[Path, str, dict[str, bytes]]) -> None:
    repo, ref, _ = experiment
    artifacts = {a.path: a for a in list_artifacts(repo, ref)}
    # every out but the checkpoint folder, uncached and outside git, so not servable
    assert set(artifacts) == {"out/model", "out/summary.txt", "plots", "metrics.json", "copies/a.txt", "copies/b.txt"}
    lock = yaml.safe_load(_git(repo, "show", f"{ref}:dvc.lock"))
    for stage, body in lock["stages"].items():
        for out in body["outs"]:
            if out["path"] == "ckpt":
                continue
            art = artifacts[out["path"]]
            assert art.stage == stage
            assert art.md5 == out["md5"] and art.size == out["size"] and art.nfiles == out.get("nfiles")
            assert art.kind == ("dir" if out["md5"].endswith(".dir") else "file")
    assert artifacts["out/model"] == Artifact(
        "out/model", "dir", artifacts["out/model"].size, artifacts["out/model"].md5, 3, "make", True
    )
    assert artifacts["copies/a.txt"].stage == "copy@a"
    assert {p for p, a in artifacts.items() if not a.cached} == {"plots", "metrics.json"}
    assert artifacts["metrics.json"].to_json()["cached"] is False
    # a sha names the same experiment
    sha = _git(repo, "rev-parse", ref).decode().strip()
    assert list_artifacts(repo, sha) == list(artifacts.values())


def test_files_and_folders_download(experiment: tuple[Path, str, dict[str, bytes]]) -> None:
    repo, ref, files = experiment
    artifacts = {a.path: a for a in list_artifacts(repo, ref)}

    media_type, length, data = _download(repo, ref, "out/summary.txt")  # a cached file out
    assert (media_type, length, data) == ("text/plain", len(files["out/summary.txt"]), files["out/summary.txt"])
    assert hashlib.md5(data).hexdigest() == artifacts["out/summary.txt"].md5
    assert b"scale 2" in data

    media_type, length, data = _download(repo, ref, "out/model/sub/notes.txt")  # a file inside a folder
    assert (media_type, length, data) == ("text/plain", len(data), files["out/model/sub/notes.txt"])
    assert _download(repo, ref, "out/model/weights.bin")[2] == files["out/model/weights.bin"]
    assert _download(repo, ref, "out/model/run.json")[0] == "application/json"  # the run record

    media_type, length, data = _download(repo, ref, "metrics.json")  # uncached: from the commit
    assert (media_type, length, data) == ("application/json", len(data), files["metrics.json"])
    assert data == _git(repo, "show", f"{ref}:metrics.json")
    assert hashlib.md5(data).hexdigest() == artifacts["metrics.json"].md5

    media_type, length, data = _download(repo, ref, "out/model")  # a cached folder: a tar
    assert media_type == "application/x-tar" and length == len(data)
    assert _untar(data) == {f"model/{f}": files[f"out/model/{f}"] for f in MODEL_FILES}

    media_type, length, data = _download(repo, ref, "out/model/sub")  # a folder inside one
    assert length == len(data) and _untar(data) == {"sub/notes.txt": files["out/model/sub/notes.txt"]}

    media_type, length, data = _download(repo, ref, "plots")  # an uncached folder: a tar from git
    assert media_type == "application/x-tar" and length == len(data)
    assert _untar(data) == {"plots/loss.tsv": files["plots/loss.tsv"]}
    assert _download(repo, ref, "plots/loss.tsv")[2] == files["plots/loss.tsv"]


def test_nothing_else_is_served(experiment: tuple[Path, str, dict[str, bytes]]) -> None:
    repo, ref, _ = experiment
    (repo / "out" / "model" / "evil").symlink_to("/etc/passwd")  # in the workspace, never read
    bad = [
        "../etc/passwd",
        "/etc/passwd",
        "dvc.yaml",
        "params.yaml",
        "out/model/../../dvc.yaml",
        "out/model/./run.json",
        "out//model",
        "out/model/",
        "",
        "out/model/missing.txt",
        "out/model/evil",
        "out/modelx",
        "out",
        "ckpt",
        "ckpt/state.txt",
        "out\\model\\run.json",
    ]
    for path in bad:
        with pytest.raises(ArtifactNotFound) as info:
            open_artifact(repo, ref, path)
        assert isinstance(info.value, ShapingError)
        assert repr(path) in str(info.value) or path.strip("/") in str(info.value), (path, str(info.value))
    for unknown in ("refs/exps/nope", "--output=x", "HEAD:dvc.yaml"):
        with pytest.raises(ArtifactNotFound):
            list_artifacts(repo, unknown)


def test_workspace_changes_after_the_run_change_nothing(experiment: tuple[Path, str, dict[str, bytes]]) -> None:
    repo, ref, files = experiment
    before = list_artifacts(repo, ref)
    sh(repo, "dvc", "exp", "run", "-S", "scale=3", "make")  # a new run: new outs, cache objects, dvc.lock
    (repo / "metrics.json").unlink()
    (repo / "metrics.json").write_text('{"loss": 0}')
    assert (repo / "out/summary.txt").read_bytes() != files["out/summary.txt"]
    assert list_artifacts(repo, ref) == before
    for name, data in files.items():
        assert _download(repo, ref, name)[2] == data, name
    assert _untar(_download(repo, ref, "out/model")[2]) == {f"model/{f}": files[f"out/model/{f}"] for f in MODEL_FILES}

    # a file DVC's cache lost: its download, and its folder's, fail before the first byte
    md5 = hashlib.md5(files["out/model/weights.bin"]).hexdigest()
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    os.chmod(cached, 0o644)
    cached.unlink()
    for path in ("out/model/weights.bin", "out/model"):
        with pytest.raises(ArtifactNotFound, match="not in DVC's cache"):
            open_artifact(repo, ref, path)
    assert _download(repo, ref, "out/model/run.json")[2] == files["out/model/run.json"]
