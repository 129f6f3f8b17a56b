"""A finished experiment's outputs, read from its git commit and DVC's cache (no HTTP here).

`list_artifacts` names every out of every stage that the experiment commit's dvc.lock records, with
dvc.lock's md5, size and nfiles. `open_artifact` streams one of them, or a file or folder inside a
folder out, by the manifest alone: a cached out's bytes come from DVC's cache by md5 (DVC 3 layout,
`files/md5/<2 hex>/<30 hex>`; a `.dir` md5 names a JSON list of `{"md5", "relpath"}`), an out declared
`cache: false` (metrics, plots, DVCLive files) from the commit's git tree, where `dvc exp` commits it.
Nothing is read from the workspace, and no path the client names is ever joined to a directory: a
path that is not an out or inside one raises `ArtifactNotFound`.

dvc.lock does not say which outs are `cache: false` (nor `persist`): dvc.yaml does, through templating
(`${paths.checkpoint_dir}`) resolved with the commit's params.yaml, so the stages are loaded with DVC's
own parser at the commit (`Repo(root, rev=sha)`, a fraction of a second; memoized per commit, which
never changes). An uncached out that the commit's tree lacks (a persistent checkpoint folder that
.gitignore keeps out of git) cannot be served and is left out of the list.
"""

from __future__ import annotations

import functools
import json
import mimetypes
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from shaping.errors import ShapingError

CHUNK = 1 << 20
TAR_MEDIA_TYPE = "application/x-tar"
MEDIA_TYPES = {
    ".jsonl": "application/x-ndjson",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".tsv": "text/tab-separated-values",
    ".md": "text/markdown",
    ".jinja": "text/plain",
    ".safetensors": "application/octet-stream",
}
MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
REGULAR_MODES = {"100644": 0o644, "100755": 0o755}  # git blob modes served; links (120000) and submodules are not


class ArtifactNotFound(ShapingError):
    """No such artifact in the experiment (or its bytes are not in DVC's cache): the HTTP layer's 404."""


@dataclass(frozen=True)
class Artifact:
    """One out of one stage, as the experiment commit's dvc.lock records it."""

    path: str  # relative to the repository root, `/`-separated
    kind: Literal["file", "dir"]
    size: int | None
    md5: str  # a folder's ends with `.dir`
    nfiles: int | None  # folders only
    stage: str  # `train`, `synthesize@identity`; `sub/dvc.yaml:name` for a dvc.yaml below the root
    cached: bool  # True: bytes in DVC's cache; False (`cache: false`): bytes in the experiment commit

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Blob:
    """Where one file's bytes are: a file in DVC's cache or a blob in git."""

    size: int
    cache_file: Path | None = None
    git_blob: str | None = None
    mode: int = 0o644


@dataclass(frozen=True)
class _Out:
    artifact: Artifact
    cache_dir: Path  # `.dvc/cache/files/md5` (`.dvc/cache` for DVC 2's md5-dos2unix outs)


@dataclass(frozen=True)
class _Snapshot:
    commit: str
    commit_time: int
    outs: tuple[_Out, ...]


def list_artifacts(root: Path, ref: str) -> list[Artifact]:
    """Every out of every stage in `ref`'s dvc.lock (a git ref or sha of a DVC experiment), in dvc.yaml's
    order. Uncached outs are listed only where the commit holds them (else they could not be served)."""
    return [out.artifact for out in _snapshot(Path(root), ref).outs]


def open_artifact(root: Path, ref: str, path: str) -> tuple[str, int | None, Iterator[bytes]]:
    """(media type, length, chunks) of `path` at `ref`: an artifact's path, or a file or folder inside a
    folder artifact. A folder streams as a tar (its files under the folder's own name); a file as its
    bytes. Everything is checked before the iterator is returned: a bad or unknown path, or a file DVC's
    cache lacks, raises ArtifactNotFound naming the path; the iterator itself only reads."""
    root = Path(root)
    snap = _snapshot(root, ref)
    parts = _clean(path)
    if parts is None:
        raise ArtifactNotFound(f"{path!r}: not a path inside the repository (no `..`, `.`, empty or absolute parts)")
    name = "/".join(parts)
    for out in snap.outs:
        art = out.artifact
        if name == art.path:
            if art.kind == "file":
                blob = _file_blob(root, snap, out, name)
                return _media_type(name), blob.size, _read(root, blob)
            return _tar(root, snap, out, name, _dir_entries(root, snap, out, name))
        if art.kind == "dir" and name.startswith(art.path + "/"):
            rel = name[len(art.path) + 1 :]
            entries = _dir_entries(root, snap, out, name)
            if rel in entries:
                blob = _entry_blob(out, entries[rel], name)
                return _media_type(name), blob.size, _read(root, blob)
            inside = {k[len(rel) + 1 :]: v for k, v in entries.items() if k.startswith(rel + "/")}
            if inside:
                return _tar(root, snap, out, name, inside)
            raise ArtifactNotFound(f"{name!r}: not in {art.path}'s manifest at {snap.commit[:12]}")
    raise ArtifactNotFound(f"{name!r}: not an output of the experiment {ref} (nor inside one)")


# --- the experiment commit's outs ------------------------------------------------------------------


def _snapshot(root: Path, ref: str) -> _Snapshot:
    return _load(str(root.resolve()), _resolve(root, ref))


@functools.lru_cache(maxsize=32)
def _load(root_dir: str, commit: str) -> _Snapshot:
    """The outs of `commit` (immutable, hence memoized), with dvc.yaml resolved by DVC's own parser."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root_dir)
    outs: list[_Out] = []
    try:
        with Repo(root_dir, rev=commit) as repo:
            cache_dirs = {"md5": Path(repo.cache.local.path), "md5-dos2unix": Path(repo.cache.legacy.path)}
            for stage in repo.index.stages:
                if not getattr(stage, "name", None):  # a `.dvc` file's import or `dvc add`: not a stage's out
                    continue
                dvcfile = stage.path_in_repo.replace(os.sep, "/")
                stage_name = stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"
                for o in stage.outs:
                    art = _artifact(repo, o, stage_name)
                    if art is not None and o.hash_info.name in cache_dirs:
                        outs.append(_Out(art, cache_dirs[o.hash_info.name]))
    except DvcException as exc:
        raise ArtifactNotFound(f"{commit[:12]}: DVC cannot read its pipeline: {exc}") from exc
    commit_time = int(_git(root, "show", "-s", "--format=%ct", commit).decode().strip() or 0)
    snap = _Snapshot(commit, commit_time, ())
    servable = tuple(out for out in outs if out.artifact.cached or _in_tree(root, snap, out))
    return _Snapshot(commit, commit_time, servable)


def _artifact(repo: Any, o: Any, stage: str) -> Artifact | None:
    """The out as an Artifact, or None where dvc.lock has no hash for it (the stage never ran) or it
    lies outside the repository (an external out)."""
    md5 = o.hash_info.value if o.hash_info else None
    if not md5 or not MD5.match(md5) or o.fs_path is None:
        return None
    rel = repo.fs.relpath(o.fs_path, repo.root_dir).replace(os.sep, "/")
    if _clean(rel) is None:
        return None
    isdir = md5.endswith(".dir")
    return Artifact(
        path=rel,
        kind="dir" if isdir else "file",
        size=o.meta.size if o.meta else None,
        md5=md5,
        nfiles=(o.meta.nfiles if o.meta else None) if isdir else None,
        stage=stage,
        cached=bool(o.use_cache),
    )


def _in_tree(root: Path, snap: _Snapshot, out: _Out) -> bool:
    """Whether an uncached out is in the commit's tree (a regular file, or a folder of some)."""
    try:
        if out.artifact.kind == "file":
            _file_blob(root, snap, out, out.artifact.path)
        else:
            _dir_entries(root, snap, out, out.artifact.path)
    except ArtifactNotFound:
        return False
    return True


# --- where the bytes are ---------------------------------------------------------------------------


def _file_blob(root: Path, snap: _Snapshot, out: _Out, name: str) -> _Blob:
    art = out.artifact
    if art.cached:
        return _cache_blob(out.cache_dir, art.md5, name)
    rows = _ls_tree(root, snap.commit, art.path, recursive=False)
    if len(rows) != 1 or rows[0][3] != art.path or rows[0][0] not in REGULAR_MODES:
        raise ArtifactNotFound(f"{name!r}: not a file in the experiment commit {snap.commit[:12]}")
    mode, sha, size, _ = rows[0]
    return _Blob(size=size, git_blob=sha, mode=REGULAR_MODES[mode])


def _dir_entries(root: Path, snap: _Snapshot, out: _Out, name: str) -> dict[str, _Blob | str]:
    """A folder out's files by relative path: from its `.dir` manifest in the cache (each file's md5,
    looked up in the cache only when served), or from its tree in the commit (git blobs)."""
    art = out.artifact
    if not art.cached:
        prefix = art.path + "/"
        entries: dict[str, _Blob | str] = {
            p[len(prefix) :]: _Blob(size=size, git_blob=sha, mode=REGULAR_MODES[mode])
            for mode, sha, size, p in _ls_tree(root, snap.commit, prefix, recursive=True)
            if mode in REGULAR_MODES and p.startswith(prefix)
        }
        if not entries:
            raise ArtifactNotFound(f"{name!r}: {art.path} is not in the experiment commit {snap.commit[:12]}")
        return entries
    manifest = _cache_file(out.cache_dir, art.md5, name)
    try:
        listed = json.loads(manifest.read_bytes())
    except (OSError, ValueError) as exc:
        raise ArtifactNotFound(f"{name!r}: {art.path}'s manifest {art.md5} in DVC's cache is unreadable") from exc
    files: dict[str, _Blob | str] = {}
    for entry in listed if isinstance(listed, list) else []:
        md5, rel = (entry.get("md5"), entry.get("relpath")) if isinstance(entry, dict) else (None, None)
        if not isinstance(md5, str) or not MD5.match(md5) or md5.endswith(".dir"):
            continue
        if isinstance(rel, str) and _clean(rel) is not None:
            files[rel] = md5
    return files


def _entry_blob(out: _Out, entry: _Blob | str, name: str) -> _Blob:
    """A folder entry's blob: a git blob as is, a cached file's md5 looked up in the cache."""
    return entry if isinstance(entry, _Blob) else _cache_blob(out.cache_dir, entry, name)


def _cache_file(cache_dir: Path, md5: str, name: str) -> Path:
    if not MD5.match(md5):
        raise ArtifactNotFound(f"{name!r}: {md5!r} is not an md5")
    path = cache_dir / md5[:2] / md5[2:]
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise ArtifactNotFound(f"{name!r}: its bytes ({md5}) are not in DVC's cache (`dvc pull` them?)")
    return path


def _cache_blob(cache_dir: Path, md5: str, name: str) -> _Blob:
    path = _cache_file(cache_dir, md5, name)
    return _Blob(size=path.stat().st_size, cache_file=path)


# --- streaming -------------------------------------------------------------------------------------


def _read(root: Path, blob: _Blob) -> Iterator[bytes]:
    """The blob's bytes in chunks; the file or `git cat-file` opens on the first chunk (an iterator
    never started holds nothing open)."""
    if blob.cache_file is not None:
        with blob.cache_file.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        return
    assert blob.git_blob is not None
    proc = subprocess.Popen(
        ["git", "-C", str(root), "cat-file", "blob", blob.git_blob], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        while chunk := proc.stdout.read(CHUNK):
            yield chunk
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _tar(
    root: Path, snap: _Snapshot, out: _Out, name: str, entries: dict[str, _Blob | str]
) -> tuple[str, int, Iterator[bytes]]:
    """A tar (POSIX pax, as `tarfile` writes) of `entries` under the folder's own name, streamed: each
    member's header from `tarfile.TarInfo.tobuf`, then its bytes in chunks, so no file is ever held in
    memory whole. Its length is known up front (the headers and the sizes fix it)."""
    base = name.rsplit("/", 1)[-1]
    members = []
    for rel in sorted(entries):
        blob = _entry_blob(out, entries[rel], f"{name}/{rel}")  # every file checked before the first byte
        info = tarfile.TarInfo(f"{base}/{rel}")
        info.size = blob.size
        info.mode = blob.mode
        info.mtime = snap.commit_time
        info.type = tarfile.REGTYPE
        members.append((info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), blob))
    length = sum(len(header) + _padded(blob.size) for header, blob in members) + 2 * tarfile.BLOCKSIZE
    length += -length % tarfile.RECORDSIZE

    def chunks() -> Iterator[bytes]:
        written = 0
        for header, blob in members:
            yield header
            sent = 0
            for chunk in _read(root, blob):
                sent += len(chunk)
                if sent > blob.size:
                    raise ArtifactNotFound(f"{name!r}: a file grew while it was read ({blob})")
                yield chunk
            if sent != blob.size:
                raise ArtifactNotFound(f"{name!r}: a file shrank while it was read ({blob})")
            pad = _padded(blob.size) - blob.size
            if pad:
                yield tarfile.NUL * pad
            written += len(header) + _padded(blob.size)
        yield tarfile.NUL * (length - written)  # the end-of-archive blocks, padded to a whole record

    return TAR_MEDIA_TYPE, length, chunks()


def _padded(size: int) -> int:
    return size + (-size % tarfile.BLOCKSIZE)


def _media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in MEDIA_TYPES:
        return MEDIA_TYPES[suffix]
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


# --- paths and git ---------------------------------------------------------------------------------


def _clean(path: str) -> list[str] | None:
    """`path`'s parts when it is a plain relative path (no `..`, `.`, empty parts, backslashes, NULs)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path:
        return None
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return parts


def _resolve(root: Path, ref: str) -> str:
    """`ref`'s commit sha; ArtifactNotFound where it names none."""
    if not ref or ref.startswith("-") or any(c.isspace() or c in "\0:" for c in ref):
        raise ArtifactNotFound(f"{ref!r}: not a git ref")
    try:
        out = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except ArtifactNotFound as exc:
        raise ArtifactNotFound(f"{ref!r}: no such commit in {root}") from exc
    if not SHA.match(out):
        raise ArtifactNotFound(f"{ref!r}: no such commit in {root}")
    return out


def _git(root: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "--literal-pathspecs", "-C", str(root), *args], capture_output=True)
    if proc.returncode != 0:
        raise ArtifactNotFound(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _ls_tree(root: Path, commit: str, path: str, recursive: bool) -> list[tuple[str, str, int, str]]:
    """(mode, sha, size, path) of the blobs at or under `path` in `commit` (sizes of trees read as -1)."""
    args = ["ls-tree", "-z", "-l", "--full-tree"] + (["-r"] if recursive else []) + [commit, "--", path]
    rows = []
    for record in _git(root, *args).split(b"\0"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, sha, size = meta.decode().split()
        rows.append((mode if kind == "blob" else kind, sha, int(size) if size != "-" else -1, name.decode()))
    return rows
