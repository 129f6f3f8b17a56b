"""The runs service's HTTP API (FastAPI): submit, list, follow and cancel runs on DVC's queue.

Every route but /healthz and /readyz needs the API key when the service was started with one (the
value of the environment variable `api_key_env`), as `X-Api-Key: <key>` or `Authorization: Bearer
<key>`. Every response carries `X-Request-ID` (the client's, or a new one); errors are
`{"code", "message", "request_id"}`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from shaping.runs.artifacts import ArtifactNotFound, list_artifacts, open_artifact
from shaping.runs.events import EventHub
from shaping.runs.models import RunModels
from shaping.runs.queue import ENDED, RunError, RunQueue

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "invalid_override": 422,
    "invalid_name": 422,
    "invalid_status": 422,
    "name_taken": 409,
    "not_found": 404,
    "not_cancellable": 409,
    "not_retryable": 409,
    "invalid_request": 422,
    "unauthorized": 401,
    "dvc_failed": 500,
}
OPEN_PATHS = {"/healthz", "/readyz", "/"}  # and /static/...: the page asks for the key itself
STATIC = Path(__file__).parent / "static"
POLL_S = 0.5  # how often a log stream looks for new lines
STATUS_EVERY_S = 2.0  # how often it asks the queue whether the run has ended
EVENTS_POLL_S = 0.25  # how often an event stream looks for new events
END_EVENTS = ("run.succeeded", "run.failed", "run.cancelled")


class GenerateRequest(BaseModel):
    """Seed 003 §30.1's generation request (text only: no server paths)."""

    prompt_text: str | None = Field(default=None, description="the text to continue")
    chat: str | None = Field(default=None, description="a user message, rendered with the run's chat template")
    max_new_tokens: int = Field(default=64, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy")
    top_k: int = Field(default=0, ge=0, description="0 = off")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop_on_eos: bool = True
    stop_sequences: list[str] = Field(default_factory=list)
    seed: int = 0
    num_return_sequences: int = Field(default=1, ge=1, le=10)


class ScoreRequest(BaseModel):
    text: str = Field(min_length=1)
    detail_level: str = Field(default="summary", pattern="^(summary|per_token)$")
    top_k: int = Field(default=5, ge=1, le=50)


class Retry(BaseModel):
    name: str | None = Field(default=None, description="the new run's id; <id>-retry-<n> if absent")


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


def sse_event(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"


def create_app(queue: RunQueue, api_key_env: str | None = "SHAPING_API_KEY", hub: EventHub | None = None) -> FastAPI:
    """The API over `queue`; the key is read from `api_key_env` once, here (None or unset: no key).
    `hub` derives the runs' events (started and stopped with the app; one over `queue` if None)."""
    key = os.environ.get(api_key_env) if api_key_env else None
    events = hub or EventHub(queue)
    models = RunModels(queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.start()
        try:
            yield
        finally:
            events.stop()

    app = FastAPI(title="shaping runs", description=__doc__, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.middleware("http")
    async def request_id_and_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        if key and request.url.path not in OPEN_PATHS and not request.url.path.startswith("/static/"):
            given = request.headers.get("x-api-key") or ""
            bearer = request.headers.get("authorization", "")
            if bearer.lower().startswith("bearer "):
                given = given or bearer[7:].strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                return error("unauthorized", "an API key is needed: X-Api-Key or Authorization: Bearer", request_id)
        response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(
            "invalid_request", f"{where or 'request'}: {first.get('msg', 'invalid')}", request.state.request_id
        )

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
    async def runs(status: str | None = None, full: bool = False) -> dict[str, Any]:
        """Every run, newest first; `?full=true` adds each one's overrides, params and metrics."""
        found = await run_in_threadpool(queue.runs_full if full else queue.runs, status)
        return {"runs": [r.to_json(full=full) for r in found]}

    @app.get("/config")
    async def config() -> dict[str, Any]:
        """conf/'s config groups and their options (what a new run's overrides can pick)."""
        return {"groups": await run_in_threadpool(queue.config_groups)}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page (static files shipped in the package; it asks for the key itself)."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/runs/{run_id}")
    async def run(run_id: str) -> dict[str, Any]:
        found = await run_in_threadpool(queue.get, run_id)
        watch = events.watch(run_id)
        if watch is not None:
            found.stage = watch.stage if found.status == "running" else None
            found.heartbeat = watch.heartbeat
        return found.to_json(full=True)

    @app.post("/runs/{run_id}/retry", status_code=202)
    async def retry(run_id: str, body: Retry | None = None) -> dict[str, Any]:
        """A failed or cancelled run submitted again with its overrides (a cancelled one resumes)."""
        return (await run_in_threadpool(queue.retry, run_id, body.name if body else None)).to_json()

    @app.get("/runs/{run_id}/artifacts")
    async def artifacts(run_id: str) -> dict[str, Any]:
        """A succeeded run's outputs (its experiment commit's dvc.lock): path, kind, size, md5, stage."""
        ref = await run_in_threadpool(queue.result_ref, run_id)
        found = await run_in_threadpool(list_artifacts, queue.root, ref)
        return {"id": run_id, "artifacts": [a.to_json() for a in found]}

    @app.get("/runs/{run_id}/artifacts/{path:path}")
    async def artifact(run_id: str, path: str) -> StreamingResponse:
        """One output, or a file inside an output folder, from DVC's cache or the experiment commit; a
        folder as a tar stream. Anything but a run's output is a 404."""
        ref = await run_in_threadpool(queue.result_ref, run_id)
        try:
            media, length, chunks = await run_in_threadpool(open_artifact, queue.root, ref, path)
        except ArtifactNotFound as err:
            raise RunError("not_found", str(err)) from None
        headers = {"Content-Length": str(length)} if length is not None else {}
        name = path.rstrip("/").rsplit("/", 1)[-1] + (".tar" if media == "application/x-tar" else "")
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return StreamingResponse(iterate_in_threadpool(chunks), media_type=media, headers=headers)

    @app.post("/runs/{run_id}/generate")
    async def generate(run_id: str, body: GenerateRequest, request: Request) -> dict[str, Any]:
        """Continue a prompt with a succeeded run's model (its base and adapter, loaded once)."""
        if (body.prompt_text is None) == (body.chat is None):
            raise RunError("invalid_request", "give one of prompt_text and chat")
        prompt = body.prompt_text
        if body.chat is not None:
            prompt = await run_in_threadpool(models.chat_prompt, run_id, body.chat)
        options = body.model_dump(exclude={"prompt_text", "chat"})
        found = await run_in_threadpool(
            models.generate,
            run_id,
            prompt or "",
            max_new_tokens=options["max_new_tokens"],
            temperature=options["temperature"],
            top_k=options["top_k"],
            top_p=options["top_p"],
            stop_sequences=options["stop_sequences"],
            stop_on_eos=options["stop_on_eos"],
            seed=options["seed"],
            num_return_sequences=options["num_return_sequences"],
        )
        return {
            "request_id": request.state.request_id,
            "status": "succeeded",
            "prompt": prompt,
            "outputs": [g["text"] for g in found],
            "steps": [g["tokens_generated"] for g in found],
            "eos_terminated": [g["eos_terminated"] for g in found],
            "sequences": found,
        }

    @app.post("/runs/{run_id}/score")
    async def score(run_id: str, body: ScoreRequest, request: Request) -> dict[str, Any]:
        """Loss, perplexity and (per_token) each token's surprisal and top-k guesses under a run's model."""
        report = await run_in_threadpool(models.score, run_id, body.text, body.detail_level, body.top_k)
        return {"request_id": request.state.request_id, "status": "succeeded", **report}

    @app.get("/events")
    async def all_events(run: str | None = None) -> StreamingResponse:
        """Server-sent events: every run's events so far, then new ones as they happen (never ends)."""
        return StreamingResponse(stream_events(run, until_end=False), media_type="text/event-stream")

    @app.get("/runs/{run_id}/events")
    async def run_events(run_id: str) -> StreamingResponse:
        """Server-sent events: the run's events so far, then new ones; ends after its last one."""
        await run_in_threadpool(queue.get, run_id, False)  # an unknown run is a 404 before the stream starts
        return StreamingResponse(stream_events(run_id, until_end=True), media_type="text/event-stream")

    async def stream_events(run_id: str | None, until_end: bool) -> AsyncIterator[str]:
        index = 0
        while True:
            found, index = events.since(index, run_id)
            for event in found:
                yield sse_event(event)
                if until_end and event["type"] in END_EVENTS:
                    return
            await asyncio.sleep(EVENTS_POLL_S)

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
