"""A real OpenAI-compatible server for tests: llama-cpp-python's `llama_cpp.server` on loopback.

`LlamaServer(model).start()` launches it as a subprocess on a free 127.0.0.1 port and waits until
GET /v1/models answers; `stop()` ends it (`kill=True`: SIGKILL, as a crash would), and `start()`
again brings it back on the same port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # tests only ever talk to loopback
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class LlamaServer:
    """One `python -m llama_cpp.server` process serving `model` (a GGUF path) on 127.0.0.1."""

    def __init__(
        self,
        model: Path,
        port: int | None = None,
        api_key: str | None = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
    ) -> None:
        self.model = Path(model)
        self.port = port or free_port()
        self.api_key = api_key
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.process: subprocess.Popen[bytes] | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="llama-server-"))
        self.log = self._log_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def command(self) -> list[str]:
        # The server loads the model as the in-process backend does: without llama.cpp's extra
        # buffer types, whose layouts depend on the CPU (dersim.builder.backends.llama_cpp).
        serve = (
            "import runpy, sys; from dersim.builder.backends.llama_cpp import "
            "without_extra_buffers; sys.argv[0] = 'llama_cpp.server'\nwith "
            "without_extra_buffers(): runpy.run_module('llama_cpp.server', run_name='__main__')"
        )
        cmd = [
            sys.executable,
            "-c",
            serve,
            "--model",
            str(self.model),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
        ]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        return cmd

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(
                self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return "(no log)"

    def _answers(self) -> bool:
        """Whether GET /v1/models gets any HTTP answer (a 401 also means the server is up)."""
        request = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with _NO_PROXY.open(request, timeout=2) as response:
                response.read()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def start(self, timeout_s: float = 60.0) -> LlamaServer:
        """Launch the server and wait (at most `timeout_s`) until it answers; fail clearly
        otherwise."""
        if self.running:
            raise RuntimeError(f"llama_cpp.server already running on port {self.port}")
        deadline = time.monotonic() + timeout_s
        while True:
            with self.log.open("ab") as log:
                log_start = log.tell()
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "NO_PROXY": HOST},
                )
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if self._answers():
                    return self
                time.sleep(0.1)
            else:
                self.stop(kill=True)
                raise RuntimeError(
                    f"llama_cpp.server did not answer on {self.base_url} within {timeout_s:.0f} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            process = self.process
            # The process exited. Right after a kill the port may still be held for a moment: retry
            # that.
            this_run = self.log.read_bytes()[log_start:].decode("utf-8", "replace").lower()
            if "address already in use" not in this_run or time.monotonic() >= deadline:
                self.process = None
                raise RuntimeError(
                    f"llama_cpp.server exited with status {process.returncode}; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, kill: bool = False, timeout_s: float = 10.0) -> None:
        """End the server: SIGKILL when `kill`, else SIGTERM (then SIGKILL after `timeout_s`)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.send_signal(signal.SIGKILL)
            else:
                process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop the server and delete its log."""
        self.stop()
        with contextlib.suppress(OSError):
            self.log.unlink()
            self._log_dir.rmdir()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
