"""The HTTP routes (FastAPI): OpenAI's /v1/chat/completions and /v1/models, adapter loading, /health and the page.

Every error is JSON in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with a 4xx code for what the
client can fix; a request that fails never stops the server. Work that takes CPU time (images, tokenising, reading
an adapter) runs in the thread pool, decoding in the batcher's thread; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lntune.serve.decoding import Sink
from lntune.serve.errors import ServeError
from lntune.serve.limits import BodyLimit
from lntune.serve.openai_schema import AdapterLoadRequest, ChatCompletionRequest
from lntune.serve.page import chat_page
from lntune.serve.service import ChatService


class QueueSink(Sink):
    """A sequence's output, handed from the decoder thread to the request's event loop. Events after the first
    finish / error are dropped."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (the server stopped hard): nobody is listening any more
            pass

    def on_text(self, piece: str) -> None:
        if not self.closed:
            self._put(("text", piece))

    def on_finish(self, reason, prompt_tokens, completion_tokens, text) -> None:
        if not self.closed:
            self.closed = True
            self._put(("finish", (reason, prompt_tokens, completion_tokens, text)))

    def on_error(self, error: ServeError) -> None:
        if not self.closed:
            self.closed = True
            self._put(("error", error))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _error_response(error: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    problems = error.errors()
    if not problems:
        return "the request body is not valid", None
    first = problems[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{param or 'body'}: {first.get('msg', 'invalid')}{more}", param


def create_app(service: ChatService) -> FastAPI:
    """The app; its lifespan starts the service's decoder thread and, at shutdown (after uvicorn has let the requests
    in flight finish), stops it once the queued ones are done."""
    settings = service.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="lntune serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        message, param = _validation_message(error)
        return _error_response(ServeError(message, 400, param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _error_response(ServeError(str(error.detail), error.status_code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        service.say(f"lntune serve: {request.method} {request.url.path} failed: {type(error).__name__}: {error}")
        return _error_response(ServeError(f"internal error: {type(error).__name__}: {error}", 500))

    def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ServeError("a valid API key is needed: Authorization: Bearer <key> (the server's --api-key)", 401,
                             code="invalid_api_key")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(chat_page(), headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.adapters.base.name, "adapters": len(service.adapters.adapters),
                "waiting": service.batcher.waiting, "api_key_required": settings.api_key is not None}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": service.models()}

    @app.get("/v1/models/{name}", dependencies=[Depends(authorized)])
    async def model(name: str):
        return service.adapters.get(name).card(service.created)

    @app.post("/v1/adapters", status_code=201, dependencies=[Depends(authorized)])
    async def load_adapter(body: AdapterLoadRequest):
        served = await run_in_threadpool(service.load_adapter, body.name, body.path)
        service.say(f"lntune serve: loaded adapter {served.name} ({served.method}) from {served.path}")
        return served.card(service.created)

    @app.delete("/v1/adapters/{name}", dependencies=[Depends(authorized)])
    async def unload_adapter(name: str):
        served = await run_in_threadpool(service.adapters.unload, name)
        service.say(f"lntune serve: unloaded adapter {served.name}")
        return {"id": served.name, "object": "model", "deleted": True}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest):
        served = service.adapters.get(body.model)
        sequence = await run_in_threadpool(service.requests.build, body, served)
        sink = sequence.sink = QueueSink(asyncio.get_running_loop())
        service.batcher.submit(sequence)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(sink, sequence, completion_id, created, served.name, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        pieces = []
        try:
            while True:
                kind, payload = await sink.queue.get()
                if kind == "text":
                    pieces.append(payload)
                elif kind == "error":
                    return _error_response(payload)
                else:
                    reason, prompt_tokens, completion_tokens, _ = payload
                    break
        finally:
            sequence.cancelled.set()  # finished, failed, or the handler was cancelled: no more tokens wanted
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": served.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                             "finish_reason": reason, "logprobs": None}],
                "usage": _usage(prompt_tokens, completion_tokens)}

    return app


async def _stream(sink: QueueSink, sequence, completion_id: str, created: int, model: str, include_usage: bool):
    """Server-sent events as OpenAI streams them: a role chunk, content chunks, a finish chunk, (usage), [DONE]."""

    def chunk(delta: dict, finish_reason=None, usage=None, choices=True) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
                if choices else []}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, payload = await sink.queue.get()
            if kind == "text":
                yield chunk({"content": payload})
            elif kind == "error":
                yield f"data: {json.dumps(payload.body())}\n\n"
                return
            else:
                reason, prompt_tokens, completion_tokens, _ = payload
                yield chunk({}, finish_reason=reason)
                if include_usage:
                    yield chunk({}, usage=_usage(prompt_tokens, completion_tokens), choices=False)
                yield "data: [DONE]\n\n"
                return
    finally:
        sequence.cancelled.set()  # the client went away mid-stream, or the stream ended: the decoder drops the row
