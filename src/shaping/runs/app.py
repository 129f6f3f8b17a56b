"""The runs service's HTTP API (FastAPI): submit, list, follow and cancel runs on DVC's queue.

Every route but /healthz and /readyz needs the API key when the service was started with one (the
value of the environment variable `api_key_env`), as `X-Api-Key: <key>` or `Authorization: Bearer
<key>`. Every response carries `X-Request-ID` (the client's, or a new one); errors are
`{"code", "message", "request_id"}`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from shaping.runs.queue import ENDED, RunError, RunQueue

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "invalid_override": 422,
    "invalid_name": 422,
    "invalid_status": 422,
    "name_taken": 409,
    "not_found": 404,
    "not_cancellable": 409,
    "unauthorized": 401,
    "dvc_failed": 500,
}
OPEN_PATHS = {"/healthz", "/readyz"}
POLL_S = 0.5  # how often a log stream looks for new lines
STATUS_EVERY_S = 2.0  # how often it asks the queue whether the run has ended


class Submission(BaseModel):
    overrides: list[str] = Field(default_factory=list, description="Hydra overrides, as `dvc exp run -S` takes them")
    name: str | None = Field(default=None, description="the run's id; a fresh run-<hex> if absent")


def error(code: str, message: str, request_id: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "request_id": request_id},
        status_code=HTTP_STATUS.get(code, 500),
        headers={"X-Request-ID": request_id},
    )


def sse_data(line: bytes) -> str:
    """One output line as server-sent events: a progress bar's carriage returns (an SSE line break
    too) split it into one `data:` event per update."""
    parts = [p.rstrip() for p in line.decode("utf-8", errors="replace").split("\r")]
    return "".join(f"data: {p}\n\n" for p in parts if p) or "data: \n\n"


def create_app(queue: RunQueue, api_key_env: str | None = "SHAPING_API_KEY") -> FastAPI:
    """The API over `queue`; the key is read from `api_key_env` once, here (None or unset: no key)."""
    key = os.environ.get(api_key_env) if api_key_env else None
    app = FastAPI(title="shaping runs", description=__doc__)

    @app.middleware("http")
    async def request_id_and_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        if key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("x-api-key") or ""
            bearer = request.headers.get("authorization", "")
            if bearer.lower().startswith("bearer "):
                given = given or bearer[7:].strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                return error("unauthorized", "an API key is needed: X-Api-Key or Authorization: Bearer", request_id)
        response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        return response

    @app.exception_handler(RunError)
    async def run_error(request: Request, err: RunError) -> JSONResponse:
        return error(err.code, err.message, request.state.request_id)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Any:
        try:
            return {"status": "ready", **await run_in_threadpool(queue.ready)}
        except Exception as err:  # the repository or DVC's queue does not answer
            return JSONResponse(
                {
                    "code": "not_ready",
                    "message": f"{type(err).__name__}: {err}",
                    "request_id": request.state.request_id,
                },
                status_code=503,
            )

    @app.post("/runs", status_code=202)
    async def submit(body: Submission) -> dict[str, Any]:
        run = await run_in_threadpool(queue.submit, body.overrides, body.name)
        log.info("queued run %s: %s", run.id, body.overrides)
        return run.to_json()

    @app.get("/runs")
    async def runs(status: str | None = None) -> dict[str, Any]:
        found = await run_in_threadpool(queue.runs, status)
        return {"runs": [r.to_json() for r in found]}

    @app.get("/runs/{run_id}")
    async def run(run_id: str) -> dict[str, Any]:
        return (await run_in_threadpool(queue.get, run_id)).to_json(full=True)

    @app.get("/runs/{run_id}/logs")
    async def logs(run_id: str, tail: int | None = None) -> dict[str, Any]:
        return {"id": run_id, "lines": await run_in_threadpool(queue.logs, run_id, tail)}

    @app.get("/runs/{run_id}/metrics")
    async def metrics(run_id: str) -> dict[str, Any]:
        """The train stage's per-step history (DVCLive): loss, learning rate, ... as [{step, value}]."""
        return {"id": run_id, "history": await run_in_threadpool(queue.history, run_id)}

    @app.get("/runs/{run_id}/logs/stream")
    async def log_stream(run_id: str) -> StreamingResponse:
        """Server-sent events: each line of the run's output as `data:` as it is written (the lines so
        far first), then `event: end` with the run's final status once it has ended."""
        await run_in_threadpool(queue.get, run_id, False)  # an unknown run is a 404 before the stream starts
        return StreamingResponse(stream_lines(run_id), media_type="text/event-stream")

    async def stream_lines(run_id: str) -> AsyncIterator[str]:
        offset, pending, checked, path = 0, b"", 0.0, None
        while True:
            ended = None
            if time.monotonic() - checked >= STATUS_EVERY_S:  # asked before reading: no last line is lost
                checked = time.monotonic()
                run = await run_in_threadpool(queue.get, run_id, False)
                ended = run.status if run.status in ENDED else None
                path = path or queue.log_file(run)
            if path is not None:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    yield sse_data(line)
            if ended is not None:
                if pending:
                    yield sse_data(pending)
                yield f"event: end\ndata: {ended}\n\n"
                return
            await asyncio.sleep(POLL_S)

    @app.post("/runs/{run_id}/cancel")
    async def cancel(run_id: str) -> dict[str, Any]:
        return (await run_in_threadpool(queue.cancel, run_id)).to_json()

    return app
