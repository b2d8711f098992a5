"""A fleet on loopback: synthetic OpenAI-compatible servers for tests and benchmarks of the builder.

Each `FleetReplica` is a real HTTP server (the standard library's `ThreadingHTTPServer`) on
127.0.0.1 that answers POST `/v1/chat/completions` and `/v1/completions` with a deterministic
answer of the (model, prompt) pair, after `latency_s`; every replica of a fleet answers alike, so
a build against any mix of them equals a build against one. Faults are switched on per replica:
`fail_with(status, calls)` answers the next `calls` requests with that HTTP status, `close()`
kills it (its port then refuses connections), and while its `gate` is clear every request sets
`arrived` and waits for the gate (a call held in flight).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
BACKLOG = 256  # the listen backlog (the standard library's 5 refuses a burst of clients)
ANSWERS = 3  # distinct answers per (model, question): depth-2 builds stay small


def fleet_answer(model: str, prompt: str) -> str:
    """The answer every replica gives `model` for `prompt`: one of ANSWERS per question line,
    chosen by a hash of the whole prompt (a previous answer in the prompt changes it)."""
    digest = hashlib.sha256(f"{model}\x1f{prompt}".encode()).digest()
    verdict = ("yes", "no", "yes")[digest[0] % ANSWERS]
    words = prompt.split()
    topic = words[min(len(words) - 1, 1 + digest[1] % 4)] if words else "it"
    return f"{verdict}, because of {topic.strip('?.,')} ({model} {digest[2] % ANSWERS})"


class _Server(ThreadingHTTPServer):
    request_queue_size = BACKLOG


class FleetReplica:
    """One synthetic replica on a loopback port (0: any free port), serving in a daemon thread."""

    def __init__(self, port: int = 0, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.requests = 0  # requests received, answered or failed
        self.answered = 0
        self._lock = threading.Lock()
        self._fail_status = 0
        self._fail_calls = 0
        self._closed = False
        self.gate, self.arrived = threading.Event(), threading.Event()
        self.gate.set()
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = replica.handle(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _Server((HOST, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/v1"

    def fail_with(self, status: int, calls: int) -> None:
        """Answer the next `calls` requests with HTTP `status` (e.g. 500) instead of an answer."""
        with self._lock:
            self._fail_status, self._fail_calls = status, calls

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one request."""
        with self._lock:
            self.requests += 1
            failing = self._fail_calls > 0
            if failing:
                self._fail_calls -= 1
        if failing:
            return self._fail_status, {"error": {"message": "injected failure"}}
        if not self.gate.is_set():
            self.arrived.set()
            self.gate.wait()
        if self.latency_s:
            time.sleep(self.latency_s)
        model = str(body.get("model", ""))
        if path.endswith("/chat/completions"):
            prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
            text = fleet_answer(model, prompt)
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        elif path.endswith("/completions"):
            prompt = str(body.get("prompt", ""))
            text = fleet_answer(model, prompt)
            choice = {"index": 0, "text": text}
        else:
            return 404, {"error": {"message": f"no route {path}"}}
        with self._lock:
            self.answered += 1
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        return 200, {
            "object": "chat.completion",
            "model": model,
            "choices": [choice],
            "usage": usage,
        }

    def close(self) -> None:
        """Stop serving and free the port: later requests are refused (a killed replica). Closing
        twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fleet(replicas: int, latency_s: float = 0.0) -> Iterator[list[FleetReplica]]:
    """`replicas` replicas on loopback ports, closed at the end."""
    started = [FleetReplica(latency_s=latency_s) for _ in range(replicas)]
    try:
        yield started
    finally:
        for replica in started:
            replica.close()
