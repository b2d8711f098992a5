"""`dersim serve`: an OpenAI-compatible API whose model name picks a trained policy (FastAPI app).

GET /v1/models lists `der-<run>` (the best deployable policy on val) and `der-<run>-<policy>` for
each servable policy; POST /v1/chat/completions routes the last user message through the real
experts and answers with a standard chat completion whose `usage` sums the route's tokens and
whose extra `route` field is the trace (`Route.to_dict`). Sampling fields (temperature, top_p,
max_tokens, ...) are ignored: routes are greedy by construction, and n > 1 is refused. With
`stream: true` the answer comes as server-sent events in OpenAI's `chat.completion.chunk` format
once the route has ended (a route's answer is known only then): the role, the answer, then a
chunk with finish_reason "stop", the usage and the route; then `data: [DONE]`. An error before
the first event (all of them: the route runs before streaming starts) is a plain JSON error.

Every request passes, in this order: the bearer token (`BearerAuth`, when one is set: 401 before
anything reads the body, on every path but GET /health, /docs and /openapi.json included), the
body-size limit (`BodyLimit`: 413 for a Content-Length over it, or a chunked body that grows past
it), then JSON parsing and validation (400). GET /health is open: 200 {"status": "ready", "running":
R, "queued": Q} once the experts are loaded, 503 with "loading" before (any answer means the process
lives).

The experts load in a background thread once the server listens (`Service`); /v1/models answers
meanwhile, a chat completion gets a 503 with Retry-After. Routes run on their own threads, at most
`concurrency` at once, with at most `max_queue` more waiting (`RouteQueue`); past that a request
gets a 429 with Retry-After instead of waiting without bound. The shared experts serialise
themselves where they must (`dersim.live.pool`). On SIGINT or SIGTERM the listener closes, the
requests in flight and queued finish, then the experts close.

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 4xx for the client's
mistakes (401, 404 for an unknown model, 413, 429), 502 when an expert fails, 503 while loading.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from dersim.builder.sources.question import Question
from dersim.live.pool import ExpertCallError
from dersim.live.router import LiveRouter, Route, live_question

TOKEN_ENV = "DERSIM_SERVE_TOKEN"
DEFAULT_MAX_INPUT_CHARS = 8000
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_QUEUE = 64
DEFAULT_CONCURRENCY = 16
HEALTH_PATH = "/health"
LOADING_RETRY_S = 5

T = TypeVar("T")
Loaded = tuple[
    dict[str, LiveRouter], Callable[[], None]
]  # the routers by model name, and what closes their experts


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": self.param,
                    "code": self.code,
                }
            },
            status_code=self.status,
            headers=self.headers,
        )


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message]
    stream: bool = False
    n: int = 1


def question_text(messages: list[Message], max_chars: int) -> str:
    """The last user message's text (string content, or its text parts joined by newlines)."""
    if not messages:
        raise APIError(400, "'messages' is empty: send at least one user message", param="messages")
    user = next((m for m in reversed(messages) if m.role == "user"), None)
    if user is None:
        raise APIError(400, "no message with role 'user' to route", param="messages")
    content = user.content
    if isinstance(content, list):
        if any(
            part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content
        ):
            raise APIError(400, "only text content parts can be routed", param="messages")
        content = "\n".join(part["text"] for part in content)
    text = (content or "").strip()
    if not text:
        raise APIError(400, "the last user message is empty", param="messages")
    if len(text) > max_chars:
        raise APIError(
            400,
            f"the last user message has {len(text)} characters; this server routes at most "
            f"{max_chars}",
            param="messages",
            code="context_length_exceeded",
        )
    return text


class BearerAuth:
    """ASGI middleware: every HTTP request but GET /health needs `Authorization: Bearer <token>`
    (401 otherwise), checked on the headers alone, before anything reads or parses the body."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != HEALTH_PATH:
            scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                given.strip().encode(), self.token
            ):
                error = APIError(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer ...)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: reads each request's body, at most `max_bytes` of it, before the app sees
    it: a 413 for a Content-Length over the limit (the body is never read) or for a chunked body
    that grows past it (reading stops there), so no request holds more than the limit in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its whole body
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body: ASGIMessage | None = {
            "type": "http.request",
            "body": b"".join(chunks),
            "more_body": False,
        }

        async def replay() -> ASGIMessage:
            nonlocal body
            if body is None:
                return await receive()  # after the body: the disconnect
            message, body = body, None
            return message

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"the request body is over {self.max_bytes} bytes, this server's limit",
            code="request_too_large",
            headers={"Connection": "close"},
        )
        await error.response()(scope, receive, send)


class Service:
    """The routers behind the API: they load in a background thread once the server starts (GET
    /health says "loading" until they are ready) and close after the server has drained."""

    def __init__(self, models: list[str], load: Callable[[], Loaded]) -> None:
        self.models = models
        self.routers: dict[str, LiveRouter] = {}
        self.error: Exception | None = None
        self.on_failure: Callable[[], None] = lambda: None  # `serve` stops the server with it
        self._load = load
        self._close: Callable[[], None] = lambda: None
        self._thread = threading.Thread(target=self._run, name="dersim-serve-load", daemon=True)

    @property
    def status(self) -> str:
        return "ready" if self.routers else "failed" if self.error is not None else "loading"

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            routers, self._close = self._load()
        except Exception as exc:  # raised again by `serve`, once the server has stopped
            self.error = exc
            self.on_failure()
            return
        self.routers = routers

    def router(self, model: str) -> LiveRouter:
        """The router of a known model; a 503 while the experts are loading."""
        router = self.routers.get(model)
        if router is None:
            raise APIError(
                503,
                "the experts are still loading; retry shortly (GET /health says when they are "
                "ready)",
                kind="server_error",
                code="loading",
                headers={"Retry-After": str(LOADING_RETRY_S)},
            )
        return router

    def close(self) -> None:
        """Wait for a load in progress, then close the experts."""
        self._thread.join()
        self._close()


class RouteQueue:
    """At most `concurrency` routes run at once, each on its own thread, and at most `max_queue`
    more wait for one to end; a request past that gets a 429 at once instead of waiting without
    bound."""

    def __init__(self, concurrency: int, max_queue: int) -> None:
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._capacity = concurrency + max_queue
        self._admitted = 0  # running or waiting (only the event loop's thread touches it)
        self._request_s = 1.0  # running mean of a request's time here: the Retry-After hint

    def counts(self) -> dict[str, int]:
        """Routes running and requests waiting for one, right now."""
        stats = self._limiter.statistics()
        return {"running": stats.borrowed_tokens, "queued": stats.tasks_waiting}

    async def run(self, fn: Callable[[], T]) -> T:
        if self._admitted >= self._capacity:
            raise APIError(
                429,
                f"the server is busy ({self._admitted} requests routing or queued); retry later",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(max(1, math.ceil(self._request_s)))},
            )
        self._admitted += 1
        started = time.perf_counter()
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        finally:
            self._admitted -= 1
            self._request_s = 0.8 * self._request_s + 0.2 * (time.perf_counter() - started)


def route_question(router: LiveRouter, question: Question, max_calls: int | None) -> Route:
    """`router.route`, with an expert's failure as an API error (400 when it can never succeed, else
    502)."""
    try:
        return router.route(question, max_calls)
    except ExpertCallError as exc:
        if exc.rejected:
            raise APIError(400, str(exc), code="expert_rejected") from None
        raise APIError(502, str(exc), kind="server_error", code="expert_failed") from None


def usage(route: Route) -> dict[str, int]:
    return {
        "prompt_tokens": route.prompt_tokens,
        "completion_tokens": route.completion_tokens,
        "total_tokens": route.prompt_tokens + route.completion_tokens,
    }


def completion(route: Route, model: str) -> dict[str, Any]:
    """The route as a `chat.completion`, with its trace in `route`."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": route.answer},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(route),
        "route": route.to_dict(),
    }


def stream_events(route: Route, model: str) -> list[str]:
    """The route as server-sent `chat.completion.chunk` events: the role, the answer, an empty delta
    with finish_reason "stop", the usage and the trace (`route`); then [DONE]."""
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, str], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }

    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": route.answer}),
        chunk({}, "stop", usage=usage(route), route=route.to_dict()),
    ]
    return [*(f"data: {json.dumps(c)}\n\n" for c in chunks), "data: [DONE]\n\n"]


def event_stream(events: list[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        for event in events:
            yield event

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def create_app(
    models: list[str],
    load: Callable[[], Loaded],
    *,
    token: str | None = None,
    max_calls: int | None = None,
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_queue: int = DEFAULT_MAX_QUEUE,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> FastAPI:
    """The API over `models` (OpenAI model names); `load` builds their routers once the server
    starts."""
    created = int(time.time())
    service = Service(models, load)
    queue = RouteQueue(concurrency, max_queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await anyio.to_thread.run_sync(service.close)

    app = FastAPI(title="dersim", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token is not None:
        app.add_middleware(BearerAuth, token=token)  # added last, so it runs first

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        return APIError(
            400, f"{'.'.join(loc) or 'body'}: {first.get('msg')}", param=loc[0] if loc else None
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    @app.get(HEALTH_PATH)
    async def health() -> JSONResponse:
        status = service.status
        ready = status == "ready"
        return JSONResponse(
            {"status": status, **queue.counts()},
            status_code=200 if ready else 503,
            headers=None if ready else {"Retry-After": str(LOADING_RETRY_S)},
        )

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "dersim"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in models]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        if name not in models:
            raise APIError(
                404, f"model '{name}' does not exist", param="model", code="model_not_found"
            )
        return model_card(name)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> dict[str, Any] | StreamingResponse:
        if body.model not in models:
            raise APIError(
                404,
                f"model '{body.model}' does not exist (known: {', '.join(models)})",
                param="model",
                code="model_not_found",
            )
        if body.n != 1:
            raise APIError(400, "n must be 1: a greedy route has one answer", param="n")
        question = live_question(question_text(body.messages, max_input_chars))
        route = await queue.run(
            partial(route_question, service.router(body.model), question, max_calls)
        )
        return (
            event_stream(stream_events(route, body.model))
            if body.stream
            else completion(route, body.model)
        )

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, except that a shutdown by SIGINT or SIGTERM ends with exit status 0
    (uvicorn re-raises the signal once it has shut down, which turns Ctrl-C into a KeyboardInterrupt
    traceback)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if (
            threading.current_thread() is not threading.main_thread()
        ):  # signals reach the main thread only
            yield
            return
        handlers = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def uvicorn_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """A server for `app` that stops when the app's experts fail to load."""
    runner = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    app.state.service.on_failure = lambda: setattr(runner, "should_exit", True)
    return runner


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run `app` until SIGINT or SIGTERM: the listener closes, the requests in flight and queued
    finish, then the experts close. An error loading the experts stops the server and is raised
    here."""
    uvicorn_server(app, host, port).run()
    if app.state.service.error is not None:
        raise app.state.service.error
