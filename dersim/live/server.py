"""`dersim serve`: an OpenAI-compatible API whose model name picks a trained policy (FastAPI app).

GET /v1/models lists `der-<run>` (the best deployable policy on val) and `der-<run>-<policy>` for
each servable policy; POST /v1/chat/completions routes the last user message through the real
experts and answers with a standard chat completion whose `usage` sums the route's tokens and
whose extra `route` field is the trace (`Route.to_dict`). Sampling fields (temperature, top_p,
max_tokens, ...) are ignored: routes are greedy by construction. Streaming and n > 1 are refused.

Requests run on the server's thread pool, each with its own route; the shared experts serialise
themselves where they must (`dersim.live.pool`). Errors use OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, with a 4xx status for the client's mistakes
(401 without the bearer token when one is set, 404 for an unknown model) and 502 when an expert
fails.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from dersim.live.pool import ExpertCallError
from dersim.live.router import Router, live_question

TOKEN_ENV = "DERSIM_SERVE_TOKEN"
DEFAULT_MAX_INPUT_CHARS = 8000


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


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
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content):
            raise APIError(400, "only text content parts can be routed", param="messages")
        content = "\n".join(part["text"] for part in content)
    text = (content or "").strip()
    if not text:
        raise APIError(400, "the last user message is empty", param="messages")
    if len(text) > max_chars:
        raise APIError(400, f"the last user message has {len(text)} characters; this server routes at most "
                            f"{max_chars}", param="messages", code="context_length_exceeded")
    return text


def create_app(routers: dict[str, Router], max_calls: int | None = None,
               max_input_chars: int = DEFAULT_MAX_INPUT_CHARS, token: str | None = None,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The API over `routers` (OpenAI model name -> router)."""
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    def authorise(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise APIError(401, "missing or wrong bearer token (Authorization: Bearer ...)", code="invalid_api_key")

    app = FastAPI(title="dersim", lifespan=lifespan, dependencies=[Depends(authorise)])

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        return APIError(400, f"{'.'.join(loc) or 'body'}: {first.get('msg')}", param=loc[0] if loc else None
                        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "dersim"}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in routers]}

    @app.get("/v1/models/{name}")
    def get_model(name: str) -> dict[str, Any]:
        if name not in routers:
            raise APIError(404, f"model '{name}' does not exist", param="model", code="model_not_found")
        return model_card(name)

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatRequest) -> dict[str, Any]:
        router = routers.get(body.model)
        if router is None:
            raise APIError(404, f"model '{body.model}' does not exist (known: {', '.join(routers)})", param="model",
                           code="model_not_found")
        if body.stream:
            raise APIError(400, "streaming is not supported: a route's answer is known only at its end",
                           param="stream")
        if body.n != 1:
            raise APIError(400, "n must be 1: a greedy route has one answer", param="n")
        question = live_question(question_text(body.messages, max_input_chars))
        try:
            route = router.route(question, max_calls)
        except ExpertCallError as exc:
            if exc.rejected:
                raise APIError(400, str(exc), code="expert_rejected") from None
            raise APIError(502, str(exc), kind="server_error", code="expert_failed") from None
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": route.answer},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": route.prompt_tokens, "completion_tokens": route.completion_tokens,
                          "total_tokens": route.prompt_tokens + route.completion_tokens},
                "route": route.to_dict()}

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, except that a shutdown by SIGINT or SIGTERM ends with exit status 0 (uvicorn
    re-raises the signal once it has shut down, which turns Ctrl-C into a KeyboardInterrupt traceback)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run `app` until SIGINT or SIGTERM; in-flight requests finish first."""
    _Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
