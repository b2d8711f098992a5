"""`dersim serve` as a real subprocess on a free loopback port, over a synthetic cache and run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from dersim.cache.reader import open_cache
from dersim.live.costs import CallPricer
from dersim.live.policy import LiveRun
from dersim.live.pool import ExpertPool
from dersim.live.router import Router, live_question

from live_helpers import TERMINATORS, synthetic_run
from llama_server import HOST, free_port

TOKEN = "test-token-1234"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Server:
    """`python -m dersim serve` on 127.0.0.1; stderr goes to a log file."""

    def __init__(self, run: Path, log: Path, token: str | None = TOKEN) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}/v1"
        self.token = token
        self.log = log
        env = {**os.environ, "DERSIM_SERVE_TOKEN": token or ""}
        with log.open("wb") as handle:
            self.process = subprocess.Popen([sys.executable, "-m", "dersim", "serve", "--run", str(run), "--port",
                                             str(self.port), "--max-input-chars", "500"],
                                            stdout=handle, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dersim serve exited with {self.process.returncode}: {log.read_text()}")
            try:
                if self.request("GET", "/models")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"dersim serve did not answer within 300 s: {log.read_text()}")

    def request(self, method: str, path: str, body: Any = None, token: str | None = "default",
                raw: bytes | None = None) -> tuple[int, dict]:
        token = self.token if token == "default" else token
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with _NO_PROXY.open(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

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
def routers(run: tuple[Path, Path]) -> Iterator[dict[str, Router]]:
    """The same routes computed in this process, to compare the server's with."""
    live = LiveRun(run[1])
    pool = ExpertPool(live.trainer.cache)
    pricer = CallPricer(live.trainer.spec.cost_mode, pool.experts, live.trainer.cache)
    yield {name: Router(live.policy(i), pool, pricer) for name, i in live.model_names().items()}
    pool.close()


def questions(run: tuple[Path, Path], n: int) -> list[str]:
    return open_cache(run[0]).questions["question"].to_list()[:n]


def chat(model: str, text: str) -> dict:
    return {"model": model, "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": text}]}


def test_models_lists_every_servable_policy_and_the_best(server: Server, run: tuple[Path, Path]) -> None:
    status, body = server.request("GET", "/models")
    assert status == 200 and body["object"] == "list"
    servable = [f"der-run-{i}" for i, t in enumerate(TERMINATORS) if t != "oracle"]
    assert [m["id"] for m in body["data"]] == ["der-run", *servable]
    assert all(m["object"] == "model" and m["owned_by"] == "dersim" for m in body["data"])


def test_a_chat_completion_is_the_routed_answer_with_its_trace(server: Server, run: tuple[Path, Path],
                                                               routers: dict[str, Router]) -> None:
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
    assert body["usage"] == {"prompt_tokens": route["prompt_tokens"], "completion_tokens": route["completion_tokens"],
                             "total_tokens": route["prompt_tokens"] + route["completion_tokens"]}


def test_concurrent_requests_each_get_their_own_route(server: Server, run: tuple[Path, Path],
                                                      routers: dict[str, Router]) -> None:
    texts = questions(run, 8)
    models = ["der-run-0", "der-run-1", "der-run-2", "der-run"] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda args: server.request("POST", "/chat/completions", chat(*args)),
                                zip(models, texts, strict=True)))
    for (status, body), model, text in zip(answers, models, texts, strict=True):
        assert status == 200, body
        expected = routers[model].route(live_question(text)).to_dict()
        assert body["model"] == model and body["route"]["question"] == text
        assert body["route"]["policy"] == expected["policy"]
        assert [(s["expert"], s["answer"]) for s in body["route"]["steps"]] == \
            [(s["expert"], s["answer"]) for s in expected["steps"]]
        assert body["choices"][0]["message"]["content"] == expected["answer"]


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"model": "der-run", "messages": []}, 400, "messages", None),
    ({"model": "der-run"}, 400, "messages", None),
    ({"model": "der-run", "messages": [{"role": "system", "content": "no user"}]}, 400, "messages", None),
    ({"model": "der-nothing", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "model_not_found"),
    ({"model": "der-run", "messages": [{"role": "user", "content": "x" * 501}]}, 400, "messages",
     "context_length_exceeded"),
    ({"model": "der-run", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, 400, "stream", None),
])
def test_bad_requests_get_an_openai_error(server: Server, body: dict, status: int, param: str,
                                          code: str | None) -> None:
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


def test_the_openai_client_works_against_the_server(server: Server, run: tuple[Path, Path],
                                                    routers: dict[str, Router]) -> None:
    client = openai.OpenAI(base_url=server.base, api_key=TOKEN, max_retries=0)
    assert "der-run" in [m.id for m in client.models.list()]
    text = questions(run, 2)[1]
    completion = client.chat.completions.create(model="der-run-1", messages=[{"role": "user", "content": text}])
    expected = routers["der-run-1"].route(live_question(text))
    assert completion.choices[0].message.content == expected.answer
    assert completion.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens
    assert len(completion.model_extra["route"]["steps"]) == len(expected.steps)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="der-nothing", messages=[{"role": "user", "content": text}])


def test_the_server_stops_cleanly(run: tuple[Path, Path], tmp_path: Path) -> None:
    server = Server(run[1], tmp_path / "server.log", token=None)
    assert server.request("GET", "/models")[0] == 200
    assert server.stop() == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()
