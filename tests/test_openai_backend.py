"""The OpenAI-compatible HTTP backend against a real server: llama-cpp-python's `llama_cpp.server`
serving SmolLM2 on 127.0.0.1 (plus a tiny stdlib stand-in for the error answers a healthy server
never gives). Covers both prompt formats, API keys (never leaked), dead endpoints, an end-to-end
build, and a server killed in the middle of a build."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from dersim.builder.backends import make_backend
from dersim.builder.backends.base import CallFailed, CallRejected, CallRequest
from dersim.builder.backends.models import resolve_model
from dersim.builder.backends.openai_http import OpenAIBackend
from dersim.builder.build import JOURNAL_DIR, BuildReport, build_cache
from dersim.builder.journal import expert_fingerprint
from dersim.builder.sources.question import Question
from dersim.cache.reader import open_cache
from dersim.cache.schema import MANIFEST
from dersim.cache.verify import verify_cache
from dersim.errors import BackendError
from dersim.recipe import ExpertSpec, PromptSpec, load_recipe

from conftest import STRATEGYQA
from llama_server import HOST, LlamaServer, free_port

pytestmark = pytest.mark.real_llm

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEY = "sk-dersim-test-6f1d2c9a8b7e"  # the right key (the test server's --api_key)
WRONG_KEY = "sk-wrong-key-0a9b8c7d6e5f"
KEY_ENV = "DERSIM_TEST_OPENAI_KEY"
FEW_SHOT = (
    "Question: Is the sun a star?\nAnswer: Yes, the sun is a star.\n\n"
    "Question: Can fish fly to the moon?\nAnswer: No, fish cannot fly.\n\n"
)


def _spec(base_url: str, prompt_format: str = "chat", **options: object) -> ExpertSpec:
    return ExpertSpec(
        name=f"smol-{prompt_format}",
        backend="openai",
        params_b=0.135,
        model="SmolLM2-135M",
        prompt_format=prompt_format,
        options={"base_url": base_url, **options},
    )


def _request(prompt: str, max_new_tokens: int = 16, stop: tuple[str, ...] = ()) -> CallRequest:
    question = Question(question_id="q", text=prompt, reference="", references=(), label="")
    return CallRequest(
        question=question,
        previous_answer=None,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        stop=stop,
    )


@pytest.fixture(scope="module")
def model_path() -> Path:
    return resolve_model(SMOL)


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LlamaServer]:
    with LlamaServer(model_path) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_server(model_path: Path) -> Iterator[LlamaServer]:
    with LlamaServer(model_path, api_key=KEY) as srv:
        yield srv


def recipe_text(
    base_url: str,
    *,
    train: int,
    test: int,
    depth: int = 2,
    retries: int = 1,
    flush_every: int = 8,
    timeout_s: float = 30,
    api_key_env: str = "",
) -> str:
    """Two SmolLM2 experts behind one server: a chat one and a few-shot completion one."""
    key = f', api_key_env = "{api_key_env}"' if api_key_env else ""
    options = f'{{ base_url = "{base_url}", timeout_s = {timeout_s}{key} }}'
    return f"""
name = "openai-smol"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{STRATEGYQA}"
train = {train}
test = {test}
seed = 3
[build]
depth = {depth}
retries = {retries}
backoff_s = 0.05
flush_every = {flush_every}
concurrency = 1
[metrics]
names = ["accuracy_yesno", "token_f1"]
[embedding]
model = "hashing"
dim = 32

[[experts]]
name = "smol-chat"
backend = "openai"
params_b = 0.135
model = "SmolLM2-135M-Instruct"
prompt_format = "chat"
max_new_tokens = 12
options = {options}

[[experts]]
name = "smol-completion"
backend = "openai"
params_b = 0.135
model = "SmolLM2-135M-Instruct"
prompt_format = "completion"
few_shot = {json.dumps(FEW_SHOT)}
max_new_tokens = 12
stop = ["\\n"]
options = {options}
"""


# -------------------------------------------------------------------------------------- real server


def test_chat_call_returns_text_and_usage_and_is_deterministic(server: LlamaServer) -> None:
    backend = make_backend(_spec(server.base_url))
    assert isinstance(backend, OpenAIBackend)
    assert backend.urls == [f"{server.base_url}/chat/completions"]
    request = _request("Is the Eiffel Tower taller than the Statue of Liberty? Answer yes or no.")
    first = backend.complete(request)
    assert first.text and first.text == first.text.strip()
    assert first.prompt_tokens > 10  # the question plus SmolLM2's chat template
    assert 0 < first.completion_tokens <= 16
    assert first.latency_s > 0
    # Another prompt in between must not change the answer. (Not the same request twice in a row:
    # llama_cpp.server then re-evaluates only the last prompt token from its KV cache, and that can
    # flip a near-tie argmax, so back-to-back repeats are not reproducible on that server.)
    other = backend.complete(_request("Name three colors of the rainbow.", max_new_tokens=12))
    assert other.text != first.text
    again = backend.complete(request)
    assert (again.text, again.completion_tokens) == (first.text, first.completion_tokens)


def test_completion_format_posts_the_raw_prompt(server: LlamaServer) -> None:
    completion = OpenAIBackend(_spec(server.base_url, "completion"))
    assert completion.urls == [f"{server.base_url}/completions"]
    question = "Question: Is Paris the capital of France?"
    out = completion.complete(
        _request(f"{FEW_SHOT}{question}\nAnswer:", max_new_tokens=16, stop=("\n",))
    )
    assert out.text and "\n" not in out.text
    assert 0 < out.completion_tokens <= 16
    # No chat template around a completion prompt: a short prompt costs fewer tokens than as a chat
    # message.
    raw = completion.complete(_request(question, max_new_tokens=1))
    chat = OpenAIBackend(_spec(server.base_url)).complete(_request(question, max_new_tokens=1))
    assert 0 < raw.prompt_tokens < chat.prompt_tokens - 10


def test_prompt_beyond_the_context_window_is_rejected(server: LlamaServer) -> None:
    backend = OpenAIBackend(_spec(server.base_url, "completion"))
    with pytest.raises(
        CallRejected, match=r"HTTP 400 from http://127\.0\.0\.1:\d+/v1/completions: .*context"
    ):
        backend.complete(_request("Tell me a story. " * 600))


def test_api_key_is_sent_and_never_leaks(
    keyed_server: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    good = make_backend(_spec(keyed_server.base_url, api_key_env=KEY_ENV))
    assert good.complete(_request("Say hello.", max_new_tokens=4)).completion_tokens > 0
    assert KEY not in repr(good)

    monkeypatch.setenv(KEY_ENV, WRONG_KEY)
    wrong = make_backend(_spec(keyed_server.base_url, api_key_env=KEY_ENV))
    started = time.perf_counter()
    with pytest.raises(CallRejected, match="HTTP 401") as info:
        wrong.complete(_request("Say hello.", max_new_tokens=4))
    assert time.perf_counter() - started < 5
    assert WRONG_KEY not in str(info.value) and KEY not in str(info.value)

    with pytest.raises(CallRejected, match="HTTP 401"):  # no key at all
        make_backend(_spec(keyed_server.base_url)).complete(
            _request("Say hello.", max_new_tokens=4)
        )

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(BackendError, match=f"expert 'smol-chat': environment variable '{KEY_ENV}'"):
        make_backend(_spec(keyed_server.base_url, api_key_env=KEY_ENV))


def _journal_text(directory: Path) -> str:
    """Every value of every journal shard, plus the shards' raw bytes (as latin-1)."""
    parts = []
    for shard in sorted((directory / JOURNAL_DIR).glob("shard-*.parquet")):
        parts.append(json.dumps(pq.read_table(shard).to_pylist()))
        parts.append(shard.read_bytes().decode("latin-1"))
    assert parts, "no journal shards"
    return "\n".join(parts)


def test_build_end_to_end_with_an_api_key(
    keyed_server: LlamaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "recipe.toml").write_text(
        recipe_text(keyed_server.base_url, train=2, test=1, api_key_env=KEY_ENV), encoding="utf-8"
    )
    recipe = load_recipe(tmp_path / "recipe.toml")
    monkeypatch.setenv(KEY_ENV, KEY)
    report = build_cache(recipe, tmp_path / "c", show_progress=False)
    assert report.failed == 0 and report.questions == 3 and report.calls_made == report.transitions
    assert verify_cache(tmp_path / "c") == []
    cache = open_cache(tmp_path / "c")
    assert (
        cache.transitions.height == report.transitions > 6
    )  # depth 1 (3 x 2 calls) and some of depth 2
    assert cache.states.filter(pl.col("depth") == 1)["answer"].str.len_chars().min() > 0
    assert KEY not in (tmp_path / "c" / MANIFEST).read_text(encoding="utf-8")
    assert KEY_ENV in (tmp_path / "c" / MANIFEST).read_text(encoding="utf-8")
    assert KEY not in _journal_text(tmp_path / "c")

    # With a wrong key every call is rejected at once; the error records must not hold that key
    # either.
    monkeypatch.setenv(KEY_ENV, WRONG_KEY)
    refused = build_cache(recipe, tmp_path / "refused", show_progress=False)
    assert refused.failed == 6 and all("HTTP 401" in f for f in refused.failures)
    journal = _journal_text(tmp_path / "refused")
    assert "HTTP 401" in journal
    for text in (
        journal,
        (tmp_path / "refused" / MANIFEST).read_text(encoding="utf-8"),
        *refused.failures,
    ):
        assert WRONG_KEY not in text and KEY not in text


def _run_in_thread(
    recipe_path: Path, out: Path
) -> tuple[threading.Thread, list[BuildReport | BaseException]]:
    result: list[BuildReport | BaseException] = []

    def work() -> None:
        try:
            result.append(build_cache(load_recipe(recipe_path), out, show_progress=False))
        except BaseException as exc:  # surfaced by the test
            result.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, result


def _answers(directory: Path) -> tuple[list[str], list[int | None]]:
    cache = open_cache(directory)
    return cache.states["answer"].to_list(), cache.transitions["next_state_id"].to_list()


def test_server_killed_mid_build_then_resumed(model_path: Path, tmp_path: Path) -> None:
    srv = LlamaServer(model_path).start()
    try:
        recipe_path = tmp_path / "recipe.toml"
        recipe_path.write_text(
            recipe_text(srv.base_url, train=3, test=1, flush_every=2, timeout_s=10),
            encoding="utf-8",
        )
        clean = build_cache(load_recipe(recipe_path), tmp_path / "clean", show_progress=False)
        assert clean.failed == 0 and verify_cache(tmp_path / "clean") == []

        killed = tmp_path / "killed"
        thread, result = _run_in_thread(recipe_path, killed)
        deadline = time.monotonic() + 60
        while (
            not list((killed / JOURNAL_DIR).glob("shard-*.parquet")) and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        srv.stop(kill=True)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the build hung after its server died"
        assert len(result) == 1 and isinstance(result[0], BuildReport), result
        interrupted = result[0]
        assert interrupted.failed > 0, "the build finished before the kill; the test proves nothing"
        assert interrupted.calls_made < clean.calls_made
        assert any("cannot reach" in f or "failed" in f for f in interrupted.failures), (
            interrupted.failures
        )
        assert any("failed calls" in p for p in verify_cache(killed))

        srv.start()
        assert srv.base_url in recipe_path.read_text(encoding="utf-8")  # the very same port
        resumed = build_cache(load_recipe(recipe_path), killed, show_progress=False)
        assert resumed.failed == 0 and resumed.calls_reused > 0
        assert resumed.calls_reused + resumed.calls_made == clean.calls_made
        assert verify_cache(killed) == []
        assert _answers(killed) == _answers(tmp_path / "clean")
    finally:
        srv.close()


# ----------------------------------------------------------------------------------- dead endpoints


def test_nothing_listening_fails_fast_and_is_retryable() -> None:
    backend = OpenAIBackend(_spec(f"http://{HOST}:{free_port()}/v1", timeout_s=2))
    started = time.perf_counter()
    with pytest.raises(CallFailed, match="cannot reach") as info:
        backend.complete(_request("Hello"))
    assert not isinstance(info.value, CallRejected)
    assert time.perf_counter() - started < 2


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never replies
        listener.bind((HOST, 0))
        listener.listen(8)
        backend = OpenAIBackend(
            _spec(f"http://{HOST}:{listener.getsockname()[1]}/v1", timeout_s=0.3)
        )
        started = time.perf_counter()
        with pytest.raises(CallFailed, match="timed out") as info:
            backend.complete(_request("Hello"))
        assert not isinstance(info.value, CallRejected)
        assert 0.25 < time.perf_counter() - started < 3


# --------------------------------------------------------- error answers (a stdlib stand-in server)


class _Scripted(BaseHTTPRequestHandler):
    """Answers POST /<status>/v1/... with that status; 200 answers depend on the status path
    part."""

    seen: list[tuple[str, dict[str, str], dict]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Scripted.seen.append((self.path, dict(self.headers), body))
        mode = self.path.split("/")[1]
        if mode == "ok":
            answer = {
                "choices": [{"message": {"content": "  Yes.\n"}, "text": " Yes. "}]
            }  # no usage
            payload, status = json.dumps(answer).encode(), 200
        elif mode == "garbage":
            payload, status = b"<html>not json", 200
        elif mode == "nochoices":
            payload, status = b'{"error": "busy"}', 200
        elif mode == "echo":  # a server that repeats the key it refuses
            payload, status = f"bad key {self.headers['Authorization']}".encode(), 401
        else:
            payload, status = f"status {mode} " * 100, int(mode)
            payload = payload.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    httpd = ThreadingHTTPServer((HOST, 0), _Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_request_shape_is_greedy_and_answers_are_stripped(
    scripted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    _Scripted.seen.clear()
    chat = OpenAIBackend(
        _spec(f"{scripted}/ok/v1/", api_key_env=KEY_ENV, served_model="served-name")
    )
    out = chat.complete(_request("Is it?", max_new_tokens=7, stop=("\n", "Question:")))
    assert (out.text, out.prompt_tokens, out.completion_tokens) == ("Yes.", 0, 0)
    completion = OpenAIBackend(_spec(f"{scripted}/ok/v1", "completion"))
    assert completion.complete(_request("Q: Is it?\nA:", max_new_tokens=5)).text == "Yes."
    (path, headers, body), (path2, headers2, body2) = _Scripted.seen
    assert path == "/ok/v1/chat/completions" and path2 == "/ok/v1/completions"
    assert headers["Authorization"] == f"Bearer {KEY}" and "Authorization" not in headers2
    assert body == {
        "model": "served-name",
        "messages": [{"role": "user", "content": "Is it?"}],
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "stop": ["\n", "Question:"],
    }
    assert body2 == {
        "model": "SmolLM2-135M",
        "prompt": "Q: Is it?\nA:",
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
    }


def test_a_sampled_request_sends_its_temperature_top_p_and_seed(scripted: str) -> None:
    """A sampled expert's k-th sample asks the server for temperature, top_p and seed k."""
    from dataclasses import replace

    _Scripted.seen.clear()
    backend = OpenAIBackend(_spec(f"{scripted}/ok/v1"))
    backend.complete(replace(_request("Is it?"), temperature=0.7, top_p=0.9, seed=3))
    ((_, _, body),) = _Scripted.seen
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 3)


@pytest.mark.parametrize(
    ("mode", "permanent"),
    [
        ("500", False),
        ("503", False),
        ("429", False),
        ("408", False),
        ("409", False),
        ("404", True),
        ("422", True),
        ("301", True),
        ("garbage", False),
        ("nochoices", False),
    ],
)
def test_error_answers_are_classified(scripted: str, mode: str, permanent: bool) -> None:
    backend = OpenAIBackend(_spec(f"{scripted}/{mode}/v1"))
    with pytest.raises(CallFailed) as info:
        backend.complete(_request("Hello"))
    assert isinstance(info.value, CallRejected) is permanent
    message = str(info.value)
    assert message.startswith("expert 'smol-chat': ") and len(message) < 400
    if mode.isdigit():
        assert f"HTTP {mode} from {scripted}/{mode}/v1/chat/completions: status {mode}" in message


def test_an_echoed_key_is_redacted(scripted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = OpenAIBackend(_spec(f"{scripted}/echo/v1", api_key_env=KEY_ENV))
    with pytest.raises(CallRejected, match=r"HTTP 401 .*bad key Bearer \*\*\*") as info:
        backend.complete(_request("Hello"))
    assert KEY not in str(info.value)


def test_max_concurrency_bounds_requests_in_flight(scripted: str) -> None:
    backend = OpenAIBackend(_spec(f"{scripted}/ok/v1", max_concurrency=2))
    in_flight, peak, lock = 0, 0, threading.Lock()
    original = backend._post

    def slow_post(url: str, body: dict) -> bytes:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        with lock:
            in_flight -= 1
        return original(url, body)

    backend._post = slow_post  # type: ignore[method-assign]
    threads = [threading.Thread(target=backend.complete, args=(_request("Hi"),)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2


def test_options_are_checked() -> None:
    with pytest.raises(BackendError, match="expert 'smol-chat': unknown openai option 'api_key'"):
        OpenAIBackend(_spec("http://127.0.0.1:1/v1", api_key="sk-123"))
    with pytest.raises(BackendError, match="needs option 'base_url'"):
        OpenAIBackend(ExpertSpec(name="x", backend="openai", params_b=1.0, model="m"))
    with pytest.raises(BackendError, match="option 'timeout_s' must be a positive number"):
        OpenAIBackend(_spec("http://127.0.0.1:1/v1", timeout_s=0))
    with pytest.raises(BackendError, match="option 'max_concurrency' must be a positive integer"):
        OpenAIBackend(_spec("http://127.0.0.1:1/v1", max_concurrency=1.5))
    with pytest.raises(BackendError, match="must not hold credentials"):
        OpenAIBackend(_spec("http://user:pw@127.0.0.1:1/v1"))


def test_only_answer_changing_options_enter_the_fingerprint() -> None:
    prompt = PromptSpec()
    base = expert_fingerprint(_spec("http://127.0.0.1:1/v1"), prompt)
    moved = _spec("http://127.0.0.1:2/v1", api_key_env=KEY_ENV, timeout_s=5, max_concurrency=1)
    assert expert_fingerprint(moved, prompt) == base
    assert expert_fingerprint(_spec("http://127.0.0.1:1/v1", served_model="other"), prompt) != base
