"""`dersim serve` as a real subprocess on a free loopback port, over a synthetic cache and run, and
over a run whose experts are a tiny OpenAI-compatible HTTP server in this process (which can hold
its answers)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from dersim.builder.build import build_cache
from dersim.builder.fleet import FleetReplica
from dersim.cache.reader import open_cache
from dersim.env.tables import EnvSpec
from dersim.errors import DersimError
from dersim.live.costs import CallPricer
from dersim.live.policy import LiveRun
from dersim.live.pool import ExpertPool
from dersim.live.router import LiveRouter, live_question
from dersim.live.server import create_app, serve, uvicorn_server
from dersim.recipe import load_recipe
from dersim.trainer.run import GridTrainer

from conftest import STRATEGYQA
from live_helpers import SMALL, TERMINATORS, synthetic_run
from llama_server import HOST, free_port

TOKEN = "test-token-1234"
MAX_BODY = 4096
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# How long a helper waits for the server to reach a state before the test fails (never asserted).
WAIT_S = 120


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict, dict[str, str]]:
    """(status, JSON answer, headers) of one request."""
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {token}"} if token else {}),
    }
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _NO_PROXY.open(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class Server:
    """`python -m dersim serve` on 127.0.0.1, ready (GET /health is 200); stderr goes to a log
    file."""

    def __init__(
        self, run: Path, log: Path, token: str | None = TOKEN, options: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.root = f"http://{HOST}:{self.port}"
        self.base = f"{self.root}/v1"
        self.token = token
        self.log = log
        env = {**os.environ, "DERSIM_SERVE_TOKEN": token or ""}
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dersim",
                    "serve",
                    "--run",
                    str(run),
                    "--port",
                    str(self.port),
                    "--max-input-chars",
                    "500",
                    "--max-body-bytes",
                    str(MAX_BODY),
                    *options,
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dersim serve exited with {self.process.returncode}: {log.read_text()}"
                )
            try:
                if call(self.root + "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"dersim serve was not ready within 300 s: {log.read_text()}")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = "default",
        raw: bytes | None = None,
    ) -> tuple[int, dict]:
        """A request to `path` under /v1, with the server's token unless told otherwise."""
        status, answer, _ = call(
            self.base + path, method, body, self.token if token == "default" else token, raw
        )
        return status, answer

    def health(self) -> dict:
        return call(self.root + "/health")[1]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return synthetic_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(run[1], tmp_path_factory.mktemp("serve-log") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def routers(run: tuple[Path, Path]) -> Iterator[dict[str, LiveRouter]]:
    """The same routes computed in this process, to compare the server's with."""
    live = LiveRun(run[1])
    pool = ExpertPool(live.trainer.cache)
    pricer = CallPricer(live.trainer.spec.cost_mode, pool.experts, live.trainer.cache)
    yield {name: LiveRouter(live.policy(i), pool, pricer) for name, i in live.model_names().items()}
    pool.close()


# The HTTP experts' server (`http_run` starts it): a synthetic OpenAI-compatible replica whose
# gate can hold calls in flight.
_EXPERT: list[FleetReplica] = []


@pytest.fixture(scope="module")
def http_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """(run, the `dersim serve` options that give its experts their endpoint): a run over a depth-1
    cache built from two HTTP experts of one `FleetReplica`, with one policy of the "none"
    terminator (every route makes one call); the expert server lives as long as the module's
    tests."""
    expert = FleetReplica()
    _EXPERT.append(expert)
    root = tmp_path_factory.mktemp("serve-http")
    base_url = expert.base_url
    experts = "".join(
        f"""
[[experts]]
name = "{name}"
backend = "openai"
params_b = {size}
model = "{name}"
max_new_tokens = 8
options = {{ base_url = "{base_url}", timeout_s = 300 }}
"""
        for name, size in (("alpha", 1.0), ("beta", 3.0))
    )
    recipe = root / "recipe.toml"
    recipe.write_text(
        f"""
name = "http"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{STRATEGYQA}"
train = 6
test = 2
seed = 3
[build]
depth = 1
[metrics]
names = ["token_f1"]
[embedding]
model = "hashing"
dim = 16
{experts}""",
        encoding="utf-8",
    )
    build_cache(load_recipe(recipe), root / "cache", show_progress=False)
    trainer = GridTrainer.from_grid(
        root / "cache",
        root / "run",
        EnvSpec(metric="token_f1", p0=0.5),
        SMALL,
        {"terminator": ["none"]},
        seeds=1,
        steps=SMALL.steps_per_chunk,
    )
    trainer.train(show_progress=False)
    yield root / "run", ("--base-url", f"alpha={base_url}", "--base-url", f"beta={base_url}")
    expert.gate.set()
    expert.close()


@pytest.fixture
def held_experts() -> Iterator[threading.Event]:
    """The HTTP experts hold every call until the test sets the returned gate (set again at the
    end)."""
    expert = _EXPERT[0]
    expert.arrived.clear()
    expert.gate.clear()
    yield expert.gate
    expert.gate.set()


def questions(run: tuple[Path, Path], n: int) -> list[str]:
    return open_cache(run[0]).questions["question"].to_list()[:n]


def chat(model: str, text: str) -> dict:
    return {
        "model": model,
        "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": text}],
    }


def post_in_one_write(port: int, body: bytes, chunk: int | None = None) -> tuple[int, dict]:
    """POST /v1/chat/completions with the token, the head and `body` in one write (so a server that
    answers before reading the whole body cannot break the send); `chunk`: send it chunked, in
    pieces of that size."""
    if chunk is None:
        framing, payload = f"Content-Length: {len(body)}", body
    else:
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        framing = "Transfer-Encoding: chunked"
        payload = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: "
        f"application/json\r\nAuthorization: Bearer {TOKEN}\r\n{framing}\r\n\r\n"
    )
    with socket.create_connection((HOST, port), timeout=WAIT_S) as sock:
        sock.sendall(head.encode() + payload)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def test_models_lists_every_servable_policy_and_the_best(
    server: Server, run: tuple[Path, Path]
) -> None:
    status, body = server.request("GET", "/models")
    assert status == 200 and body["object"] == "list"
    servable = [f"der-run-{i}" for i, t in enumerate(TERMINATORS) if t != "oracle"]
    assert [m["id"] for m in body["data"]] == ["der-run", *servable]
    assert all(m["object"] == "model" and m["owned_by"] == "dersim" for m in body["data"])


def test_a_chat_completion_is_the_routed_answer_with_its_trace(
    server: Server, run: tuple[Path, Path], routers: dict[str, LiveRouter]
) -> None:
    text = questions(run, 1)[0]
    status, body = server.request("POST", "/chat/completions", chat("der-run", text))
    assert status == 200, body
    expected = routers["der-run"].route(live_question(text)).to_dict()
    assert body["object"] == "chat.completion" and body["model"] == "der-run"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected["answer"]}
    route = body["route"]
    assert [s["expert"] for s in route["steps"]] == [s["expert"] for s in expected["steps"]]
    assert [s["answer"] for s in route["steps"]] == [s["answer"] for s in expected["steps"]]
    assert route["stopped_by"] == expected["stopped_by"] and route["question"] == text
    assert body["usage"] == {
        "prompt_tokens": route["prompt_tokens"],
        "completion_tokens": route["completion_tokens"],
        "total_tokens": route["prompt_tokens"] + route["completion_tokens"],
    }


def test_concurrent_requests_each_get_their_own_route(
    server: Server, run: tuple[Path, Path], routers: dict[str, LiveRouter]
) -> None:
    texts = questions(run, 8)
    models = ["der-run-0", "der-run-1", "der-run-2", "der-run"] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda args: server.request("POST", "/chat/completions", chat(*args)),
                zip(models, texts, strict=True),
            )
        )
    for (status, body), model, text in zip(answers, models, texts, strict=True):
        assert status == 200, body
        expected = routers[model].route(live_question(text)).to_dict()
        assert body["model"] == model and body["route"]["question"] == text
        assert body["route"]["policy"] == expected["policy"]
        assert [(s["expert"], s["answer"]) for s in body["route"]["steps"]] == [
            (s["expert"], s["answer"]) for s in expected["steps"]
        ]
        assert body["choices"][0]["message"]["content"] == expected["answer"]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "der-run", "messages": []}, 400, "messages", None),
        ({"model": "der-run"}, 400, "messages", None),
        (
            {"model": "der-run", "messages": [{"role": "system", "content": "no user"}]},
            400,
            "messages",
            None,
        ),
        (
            {"model": "der-nothing", "messages": [{"role": "user", "content": "hi"}]},
            404,
            "model",
            "model_not_found",
        ),
        (
            {"model": "der-run", "messages": [{"role": "user", "content": "x" * 501}]},
            400,
            "messages",
            "context_length_exceeded",
        ),
        (
            {"model": "der-run", "n": 2, "messages": [{"role": "user", "content": "hi"}]},
            400,
            "n",
            None,
        ),
    ],
)
def test_bad_requests_get_an_openai_error(
    server: Server, body: dict, status: int, param: str, code: str | None
) -> None:
    got, answer = server.request("POST", "/chat/completions", body)
    assert got == status
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    assert (answer["error"]["param"], answer["error"]["code"]) == (param, code)


def test_malformed_json_and_a_missing_token_are_refused(server: Server) -> None:
    status, body = server.request("POST", "/chat/completions", raw=b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = server.request("GET", "/models", token=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = server.request("GET", "/models", token="wrong")
    assert status == 401


def test_an_oversized_body_gets_413_by_content_length_and_when_chunked(server: Server) -> None:
    padded = json.dumps(chat("der-run", "x" * (2 * MAX_BODY))).encode()
    for chunk in (None, 1000):
        status, body = post_in_one_write(server.port, padded, chunk)
        assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = post_in_one_write(
        server.port, json.dumps(chat("der-run", "Is water wet?")).encode(), 10
    )
    assert status == 200 and body["object"] == "chat.completion"


def test_the_token_is_checked_before_the_body_is_read(server: Server) -> None:
    for raw in (b"{not json", b"{" * (4 * MAX_BODY)):
        status, body = server.request("POST", "/chat/completions", raw=raw, token=None)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_the_docs_and_openapi_need_the_token(server: Server) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        request = urllib.request.Request(server.root + path)
        with pytest.raises(urllib.error.HTTPError) as refused:
            _NO_PROXY.open(request, timeout=WAIT_S)
        assert refused.value.code == 401
        request.add_header("Authorization", f"Bearer {TOKEN}")
        with _NO_PROXY.open(request, timeout=WAIT_S) as response:
            assert response.status == 200
    assert "/v1/chat/completions" in call(server.root + "/openapi.json", token=TOKEN)[1]["paths"]


def test_health_is_liveness_then_readiness_once_the_experts_load(
    server: Server, routers: dict[str, LiveRouter]
) -> None:
    assert call(server.root + "/health")[:2] == (
        200,
        {"status": "ready", "running": 0, "queued": 0},
    )
    loaded, closed = threading.Event(), threading.Event()

    def load() -> tuple[dict[str, LiveRouter], Callable[[], None]]:
        loaded.wait()
        return {"der-test": routers["der-run"]}, closed.set

    port = free_port()
    root = f"http://{HOST}:{port}"
    runner = uvicorn_server(create_app(["der-test"], load, token=TOKEN), HOST, port)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: runner.started, "the in-process server to listen")
        status, body, headers = call(root + "/health")
        assert (status, body["status"]) == (503, "loading") and int(headers["retry-after"]) > 0
        assert call(root + "/v1/models", token=TOKEN)[1]["data"][0]["id"] == "der-test"
        status, body, headers = call(
            root + "/v1/chat/completions", "POST", chat("der-test", "Is water wet?"), TOKEN
        )
        assert (status, body["error"]["code"]) == (503, "loading") and int(
            headers["retry-after"]
        ) > 0
        loaded.set()
        wait_until(lambda: call(root + "/health")[0] == 200, "readiness")
        assert call(root + "/health")[1]["status"] == "ready"
        status, body, _ = call(
            root + "/v1/chat/completions", "POST", chat("der-test", "Is water wet?"), TOKEN
        )
        assert status == 200 and body["route"]["question"] == "Is water wet?"
        assert not closed.is_set()
    finally:
        loaded.set()
        runner.should_exit = True
        thread.join(timeout=60)
    assert closed.is_set()


def test_an_expert_that_fails_to_load_stops_the_server_with_its_error() -> None:
    def load() -> tuple[dict[str, LiveRouter], Callable[[], None]]:
        raise DersimError("expert 'x': model file missing")

    failed: list[BaseException] = []

    def run_server() -> None:
        try:
            serve(create_app(["der-test"], load), HOST, free_port())
        except DersimError as exc:
            failed.append(exc)

    thread = threading.Thread(target=run_server, daemon=True)
    thread.start()
    thread.join(timeout=WAIT_S)
    assert not thread.is_alive() and [str(e) for e in failed] == ["expert 'x': model file missing"]


def test_streaming_with_the_openai_client_gives_the_answer_and_the_trace(
    server: Server, run: tuple[Path, Path], routers: dict[str, LiveRouter]
) -> None:
    client = openai.OpenAI(base_url=server.base, api_key=TOKEN, max_retries=0)
    text = questions(run, 3)[2]
    messages = [{"role": "user", "content": text}]
    plain = client.chat.completions.create(model="der-run-1", messages=messages)
    chunks = list(client.chat.completions.create(model="der-run-1", messages=messages, stream=True))
    assert all(c.object == "chat.completion.chunk" and c.model == "der-run-1" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == plain.choices[0].message.content
    )
    assert (
        plain.choices[0].message.content == routers["der-run-1"].route(live_question(text)).answer
    )
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and all(
        c.choices[0].finish_reason is None for c in chunks[:-1]
    )
    assert last.usage.total_tokens == plain.usage.total_tokens
    assert [(s["expert"], s["answer"]) for s in last.model_extra["route"]["steps"]] == [
        (s["expert"], s["answer"]) for s in plain.model_extra["route"]["steps"]
    ]
    with pytest.raises(
        openai.NotFoundError
    ):  # an error before the stream starts is a plain JSON error
        client.chat.completions.create(model="der-nothing", messages=messages, stream=True)


def test_a_full_queue_gets_429_with_retry_after(
    http_run: tuple[Path, tuple[str, ...]], held_experts: threading.Event, tmp_path: Path
) -> None:
    server = Server(
        http_run[0],
        tmp_path / "server.log",
        options=(*http_run[1], "--concurrency", "1", "--max-queue", "1"),
    )
    pool = ThreadPoolExecutor(2)
    try:
        running = pool.submit(
            server.request, "POST", "/chat/completions", chat("der-run", "Is water wet?")
        )
        wait_until(_EXPERT[0].arrived.is_set, "the first route to call its expert")
        queued = pool.submit(
            server.request, "POST", "/chat/completions", chat("der-run", "Is fire hot?")
        )
        wait_until(lambda: server.health()["queued"] == 1, "the second request to queue")
        assert server.health() == {"status": "ready", "running": 1, "queued": 1}
        status, answer, headers = call(
            server.base + "/chat/completions", "POST", chat("der-run", "Is ice cold?"), TOKEN
        )
        assert (status, answer["error"]["code"]) == (429, "queue_full") and int(
            headers["retry-after"]
        ) >= 1
        held_experts.set()
        assert [f.result()[0] for f in (running, queued)] == [200, 200]
    finally:
        held_experts.set()
        pool.shutdown()
        server.stop()


def test_sigterm_drains_the_requests_in_flight_and_queued(
    http_run: tuple[Path, tuple[str, ...]], held_experts: threading.Event, tmp_path: Path
) -> None:
    server = Server(
        http_run[0],
        tmp_path / "server.log",
        token=None,
        options=(*http_run[1], "--concurrency", "1"),
    )
    pool = ThreadPoolExecutor(2)
    try:
        texts = ["Is water wet?", "Is fire hot?"]
        futures = [
            pool.submit(server.request, "POST", "/chat/completions", chat("der-run", texts[0]))
        ]
        wait_until(_EXPERT[0].arrived.is_set, "the first route to call its expert")
        futures.append(
            pool.submit(server.request, "POST", "/chat/completions", chat("der-run", texts[1]))
        )
        wait_until(lambda: server.health()["queued"] == 1, "the second request to queue")
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: not listening(server.port), "the listener to close")
        assert server.process.poll() is None  # still draining
        held_experts.set()
        answers = [f.result() for f in futures]
        assert [status for status, _ in answers] == [200, 200]
        assert [body["route"]["question"] for _, body in answers] == texts
        assert all(len(body["route"]["steps"]) == 1 for _, body in answers)
        assert server.process.wait(timeout=WAIT_S) == 0
        assert "Traceback" not in server.log.read_text()
    finally:
        held_experts.set()
        pool.shutdown()
        server.stop()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def test_the_openai_client_works_against_the_server(
    server: Server, run: tuple[Path, Path], routers: dict[str, LiveRouter]
) -> None:
    client = openai.OpenAI(base_url=server.base, api_key=TOKEN, max_retries=0)
    assert "der-run" in [m.id for m in client.models.list()]
    text = questions(run, 2)[1]
    completion = client.chat.completions.create(
        model="der-run-1", messages=[{"role": "user", "content": text}]
    )
    expected = routers["der-run-1"].route(live_question(text))
    assert completion.choices[0].message.content == expected.answer
    assert completion.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens
    assert len(completion.model_extra["route"]["steps"]) == len(expected.steps)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="der-nothing", messages=[{"role": "user", "content": text}]
        )
