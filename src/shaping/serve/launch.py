"""Run `python -m shaping.serve` as a child process, for tests and scripts that need a live server.

with running_server("models/base", {"tuned": "models/adapter"}) as base_url:
    openai.OpenAI(base_url=base_url, api_key="x").chat.completions.create(model="tuned", ...)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from shaping.errors import ShapingError

READY = "shaping.serve: listening on "


@contextmanager
def running_server(
    model: str | Path,
    adapters: Mapping[str, str | Path] | None = None,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 120,
) -> Iterator[str]:
    """Start a server on a free 127.0.0.1 port, yield its base URL (http://127.0.0.1:PORT/v1),
    stop it on exit. `args` are more CLI flags; `env` is added to this process's environment; the
    server's output goes to `log_path` (a temp file by default) and is quoted if it fails to start."""
    command = [sys.executable, "-m", "shaping.serve", "--model", str(model), "--port", "0", *args]
    for name, path in (adapters or {}).items():
        command += ["--adapter", f"{name}={path}"]
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="shaping-serve-")) / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        yield _wait_for_url(process, log_path, timeout_s)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`. `group`: to its whole process
    group too (a process started with `start_new_session=True`, and its children)."""
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    with contextlib.suppress(ProcessLookupError):
        send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            send(signal.SIGKILL)
        process.wait()


def _wait_for_url(process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith(READY):
                return line.removeprefix(READY).split()[0]
        if process.poll() is not None:
            raise ShapingError(f"shaping.serve exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.1)
    raise ShapingError(f"shaping.serve did not start within {timeout_s:.0f}s:\n{log_path.read_text()}")
