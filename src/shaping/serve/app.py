"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions (plain and SSE), /health, and
vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter (adapters attached while serving)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shaping.inference.hf import Completion
from shaping.serve.batcher import Batcher, ModelGone
from shaping.serve.models import AdapterError, SamplingOptions, ServedModels

MAX_STOP_SEQUENCES = 4  # as OpenAI's API
# OpenAI parameters whose effect this server cannot give: refused rather than silently ignored
UNSUPPORTED = ("tools", "functions", "logprobs", "top_logprobs", "logit_bias", "audio", "prediction")


class APIError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI parameters (user, metadata, ...) are ignored
    model: str
    messages: list[Message] = Field(min_length=1)
    n: int | None = Field(None, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's; vLLM's server takes it too
    min_tokens: int | None = Field(None, ge=0)  # vLLM's: no end-of-turn before this many tokens
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's body for /v1/load_lora_adapter (load_inplace: replace an adapter of that name)."""

    model_config = ConfigDict(extra="allow")
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM's lora_int_id is accepted and ignored
    lora_name: str


def conversation_of(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as the chat template takes them: plain strings, `developer` as `system`."""
    conversation = []
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            if any(part.type != "text" for part in message.content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", param=f"messages.{i}")
            content = "".join(part.text or "" for part in message.content)
        else:
            content = message.content or ""
        conversation.append({"role": "system" if message.role == "developer" else message.role, "content": content})
    return conversation


def check_supported(request: ChatCompletionRequest) -> None:
    extra = request.model_extra or {}
    for name in UNSUPPORTED:
        if extra.get(name):
            raise APIError(400, f"{name}: not supported by shaping.serve", param=name)
    response_format = extra.get("response_format")
    if response_format and response_format != {"type": "text"}:
        raise APIError(
            400, "response_format: only {'type': 'text'} is supported by shaping.serve", param="response_format"
        )


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    sequences = [stop] if isinstance(stop, str) else list(stop or [])
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(sequences)}", param="stop")
    return tuple(s for s in sequences if s)


def max_new_tokens(request: ChatCompletionRequest, prompt_tokens: int, context: int | None, default: int) -> int:
    """max_completion_tokens (or the older max_tokens); without either, `default` clipped to the
    room the context leaves."""
    requested = request.max_completion_tokens or request.max_tokens
    if context is None:
        return requested or default
    room = context - prompt_tokens
    if room <= 0 or (requested is not None and requested > room):
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens; the messages take {prompt_tokens} "
            f"and {requested or 1} more were requested. Shorten the messages or lower max_completion_tokens.",
            param="messages",
            code="context_length_exceeded",
        )
    return requested or min(default, room)


def completion_body(
    request_id: str, created: int, model: str, replies: list[Completion], prompt_tokens: int
) -> dict[str, Any]:
    completion_tokens = sum(r.completion_tokens for r in replies)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "finish_reason": r.finish_reason,
                "logprobs": None,
            }
            for i, r in enumerate(replies)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def stream_events(
    request_id: str,
    created: int,
    model: str,
    n: int,
    pieces: asyncio.Queue[tuple[int, str]],
    task: asyncio.Future[list[Completion]],
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE events as the replies are made: each choice's role, then its text in the pieces the
    generation thread hands on (`pieces`, filled until `task` ends), each choice's finish_reason,
    the usage chunk if asked for, then [DONE]. A client that goes away cancels the request."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    try:
        for i in range(n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        while not (task.done() and pieces.empty()):
            if pieces.empty():
                getter: asyncio.Future[Any] = asyncio.ensure_future(pieces.get())
                await asyncio.wait({getter, cast(asyncio.Future[Any], task)}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                choice, piece = getter.result()
            else:
                choice, piece = pieces.get_nowait()
            yield chunk([{"index": choice, "delta": {"content": piece}, "finish_reason": None}])
        try:
            replies = task.result()
        except Exception as err:  # failed after the stream began: an error event, as OpenAI's
            yield f"data: {json.dumps(APIError(500, f'generation failed: {err}', type='server_error').body)}\n\n"
            return
        for i, reply in enumerate(replies):
            yield chunk([{"index": i, "delta": {}, "finish_reason": reply.finish_reason}])
        if include_usage:
            usage = completion_body(request_id, created, model, replies, prompt_tokens)["usage"]
            yield chunk([], usage)
        yield "data: [DONE]\n\n"
    finally:
        task.cancel()


def create_app(
    models: ServedModels,
    *,
    max_batch_size: int = 64,
    batch_window_s: float = 0.01,
    max_batch_tokens: int | None = None,
    allow_lora_updates: bool = False,
    default_max_tokens: int = 256,
    api_key: str | None = None,
) -> FastAPI:
    """The app over `models`. With `api_key`, /v1 routes need `Authorization: Bearer <api_key>`;
    `allow_lora_updates` adds vLLM's routes that load and unload adapters while serving."""
    batcher = Batcher(models, max_batch_size=max_batch_size, window_s=batch_window_s, max_tokens=max_batch_tokens)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="shaping.serve", lifespan=lifespan)
    app.state.batcher = batcher

    async def authorize(request: Request) -> None:  # async: a sync dependency runs in a thread pool
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not secrets.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid body"))
        return JSONResponse(APIError(400, message, param=param).body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(err.status_code, str(err.detail)).body, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        # Starlette re-raises after this response, so uvicorn logs the traceback
        body = APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").body
        return JSONResponse(body, status_code=500)

    def model_card(name: str) -> dict[str, Any]:
        card: dict[str, Any] = {"id": name, "object": "model", "created": started, "owned_by": "shaping"}
        if name != models.base_name:
            card["parent"] = models.base_name
        return card

    def check_model(name: str) -> None:
        if name not in models.names:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves: {', '.join(models.names)}",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **batcher.counts()}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in models.names]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
    async def retrieve_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card(name)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(request: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        check_model(request.model)
        check_supported(request)
        conversation = conversation_of(request)
        try:
            prompt_ids = models.prompt_ids(conversation)
        except Exception as err:  # the chat template refuses the conversation (e.g. roles out of order)
            raise APIError(400, f"messages: the chat template rejects them ({err})", param="messages") from err
        prompt_tokens = len(prompt_ids)
        temperature = 1.0 if request.temperature is None else request.temperature
        options = SamplingOptions(
            temperature=temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            max_new_tokens=max_new_tokens(request, prompt_tokens, models.context_length, default_max_tokens),
            stop=stop_sequences(request.stop),
            seed=request.seed if temperature > 0 else None,
        )
        min_tokens = request.min_tokens or 0
        if min_tokens > options.max_new_tokens:
            raise APIError(
                400, f"min_tokens: {min_tokens} is more than max_tokens ({options.max_new_tokens})", param="min_tokens"
            )
        request_id, created, n = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.n or 1
        if not request.stream:
            try:
                replies = await batcher.submit(
                    request.model, conversation, n, options, min_tokens=min_tokens, prompt_ids=prompt_ids
                )
            except ModelGone:  # unloaded while the request waited
                check_model(request.model)
                raise
            # the body as FastAPI would send the dict, without its jsonable_encoder pass over it
            return JSONResponse(completion_body(request_id, created, request.model, replies, prompt_tokens))
        pieces: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        task = asyncio.ensure_future(
            batcher.submit(
                request.model,
                conversation,
                n,
                options,
                lambda i, p: pieces.put_nowait((i, p)),
                min_tokens=min_tokens,
                prompt_ids=prompt_ids,
            )
        )
        # the response begins once the request runs, so an error before that still gets its status
        while pieces.empty() and not task.done():
            await asyncio.sleep(0.005)
        if task.done() and task.exception() is not None:
            if isinstance(task.exception(), ModelGone):
                check_model(request.model)
            task.result()
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        events = stream_events(request_id, created, request.model, n, pieces, task, prompt_tokens, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")

    if not allow_lora_updates:  # as vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING: no such routes (404)
        return app

    # vLLM's routes and answers (200 with a plain-text line; errors in OpenAI's body), so a client
    # written for one works with the other. The change runs in the generate thread between batches.
    @app.post("/v1/load_lora_adapter", dependencies=[Depends(authorize)], response_class=PlainTextResponse)
    async def load_lora_adapter(request: LoadLoRAAdapterRequest) -> str:
        try:
            await batcher.call(models.load_adapter, request.lora_name, request.lora_path, request.load_inplace)
        except AdapterError as err:
            raise APIError(err.status, str(err), param=err.field, code=err.code) from None
        return f"Success: LoRA adapter '{request.lora_name}' added successfully."

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(authorize)], response_class=PlainTextResponse)
    async def unload_lora_adapter(request: UnloadLoRAAdapterRequest) -> str:
        try:
            await batcher.call(models.unload_adapter, request.lora_name)
        except AdapterError as err:
            raise APIError(err.status, str(err), param=err.field, code=err.code) from None
        return f"Success: LoRA adapter '{request.lora_name}' removed successfully."

    return app
