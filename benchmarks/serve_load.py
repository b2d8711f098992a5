"""Serving load: requests/s and latency of `dersim serve` at 1, 8 and 64 concurrent clients, against
HTTP experts on loopback that answer at once, so what is measured is dersim's own cost per request,
not an LLM's.

Setup, in a temp dir: two canned OpenAI-compatible chat experts (`dersim.builder.fleet` replicas) in
a separate process (an answer by a hash of the model and prompt, no model behind it);
a cache built from them (strategyqa questions, depth 2, hashing embeddings); a run with one policy
of the "none" terminator (every route makes T_max = 2 calls); `dersim serve` on it in a subprocess
(default --concurrency and --max-queue). The clients are threads of this process, one keep-alive
connection each, posting chat completions back to back for `--seconds` per row after a warm-up.

Rows, per concurrency level:
- `dersim serve`: requests/s, p50/p99 of the client's latency, the expert time per request (the
  route's summed call `latency_s` from its trace, measured by dersim's HTTP backend around each
  call) and the server's own overhead per request: the client's latency minus that expert time
  (p50, p99). It holds HTTP, the wait in the queue (--concurrency routes run at once), the three
  state embeddings and policy steps of a route and the JSON answer; `in route` is the part inside
  the route (its wall time minus its calls: embeddings, policy, the backend's own HTTP client).
- `direct`: the same clients making the same number of calls (one route's worth) straight to the
  canned experts, a new connection per call as dersim's backend does: the baseline. `x direct`
  is dersim's p50 over the baseline's p50.
Client, server and experts share the machine's cores: on a small machine the 64-client rows
measure contention as much as dersim.

    python benchmarks/serve_load.py [--clients 1,8,64] [--seconds 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from dersim.builder.fleet import FleetReplica

REPO = Path(__file__).resolve().parents[1]
STRATEGYQA = REPO.parent / "shared" / "data" / "bigbench" / "strategyqa" / "task.json"
HOST = "127.0.0.1"
EXPERTS = ("alpha", "beta")
MODEL = "der-run"


def serve_experts(ports: list[int]) -> None:
    """One synthetic expert replica (`dersim.builder.fleet`) per port, until the process is
    terminated."""
    replicas = [FleetReplica(port=port) for port in ports]
    threading.Event().wait()
    del replicas


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_listening(ports: list[int], process: multiprocessing.Process) -> None:
    """Until every port accepts a connection; fail if the experts' process dies first."""
    deadline = time.monotonic() + 60
    for port in ports:
        while socket.socket().connect_ex((HOST, port)) != 0:
            if not process.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"the canned experts do not listen on port {port}")
            time.sleep(0.05)


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    """Until GET `url` answers 200; fail if the server exits first."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"dersim serve exited with status {process.returncode}: {log.read_text()}"
            )
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while the experts load
            time.sleep(0.2)
    raise SystemExit(f"{url}: not ready within 300 s: {log.read_text()}")


def build_run(root: Path, ports: list[int]) -> Path:
    """A depth-2 cache from the canned experts, and a run with one "none" policy trained on it."""
    from dersim.builder.build import build_cache
    from dersim.env.tables import EnvSpec
    from dersim.recipe import load_recipe
    from dersim.trainer.ppo import PPOConfig
    from dersim.trainer.run import GridTrainer

    experts = "".join(
        f"""
[[experts]]
name = "{name}"
backend = "openai"
params_b = {1 + 2 * i}
model = "{name}"
max_new_tokens = 8
options = {{ base_url = "http://{HOST}:{port}/v1", max_concurrency = 64 }}
"""
        for i, (name, port) in enumerate(zip(EXPERTS, ports, strict=True))
    )
    recipe = root / "recipe.toml"
    recipe.write_text(
        f"""
name = "serve-load"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{STRATEGYQA}"
train = 40
test = 10
seed = 0
[build]
depth = 2
concurrency = 8
[metrics]
names = ["token_f1"]
[embedding]
model = "hashing"
dim = 64
{experts}""",
        encoding="utf-8",
    )
    build_cache(load_recipe(recipe), root / "cache", show_progress=False)
    config = PPOConfig(
        num_envs=8, num_steps=8, update_epochs=2, num_minibatches=2, hidden=32, updates_per_chunk=10
    )
    trainer = GridTrainer.from_grid(
        root / "cache",
        root / "run",
        EnvSpec(metric="token_f1", p0=0.5),
        config,
        {"terminator": ["none"]},
        seeds=1,
        steps=config.steps_per_chunk,
    )
    trainer.train(show_progress=False)
    return root / "run"


@dataclass
class Sample:
    latency_s: float  # the client's, request to last byte
    expert_s: float = 0.0  # the route's summed call latency (dersim rows)
    route_s: float = 0.0  # the route's wall time (dersim rows)


@dataclass
class Row:
    name: str
    clients: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0

    def latency(self, q: float) -> float:
        return float(np.quantile([s.latency_s for s in self.samples], q))

    def overhead(self, q: float) -> float:
        """The server's own time per request: the client's latency minus the expert calls'."""
        return float(np.quantile([s.latency_s - s.expert_s for s in self.samples], q))

    def median(self, values: Callable[[Sample], float]) -> float:
        return statistics.median(values(s) for s in self.samples)


def load(clients: int, seconds: float, one: Callable[[dict], Sample | None], name: str) -> Row:
    """`clients` threads calling `one` back to back for `seconds` (each thread's state in its own
    dict)."""
    row = Row(name, clients, seconds)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client() -> None:
        state: dict = {}
        start.wait()
        while time.perf_counter() < deadline[0]:
            sample = one(state)
            with lock:
                if sample is None:
                    row.errors += 1
                else:
                    row.samples.append(sample)
        if "connection" in state:
            state["connection"].close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    row.seconds = time.perf_counter() - began
    return row


def dersim_call(port: int, questions: list[str]) -> Callable[[dict], Sample | None]:
    """One chat completion on the thread's keep-alive connection; the expert time from the route's
    trace."""
    counter = iter(range(10**9))

    def one(state: dict) -> Sample | None:
        connection = state.setdefault(
            "connection", http.client.HTTPConnection(HOST, port, timeout=120)
        )
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": questions[next(counter) % len(questions)]}
                ],
            }
        )
        started = time.perf_counter()
        try:
            connection.request(
                "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            state.pop("connection").close()
            return None
        elapsed = time.perf_counter() - started
        if response.status != 200:
            return None
        route = json.loads(raw)["route"]
        return Sample(elapsed, route["latency_s"], route["wall_s"])

    return one


def direct_call(ports: list[int], calls: int) -> Callable[[dict], Sample | None]:
    """`calls` chat completions straight to the canned experts, a new connection each (as dersim's
    backend)."""
    body = json.dumps(
        {
            "model": EXPERTS[0],
            "messages": [{"role": "user", "content": "Is water wet?"}],
            "max_tokens": 8,
            "temperature": 0.0,
        }
    )

    def one(_state: dict) -> Sample | None:
        started = time.perf_counter()
        for i in range(calls):
            connection = http.client.HTTPConnection(HOST, ports[i % len(ports)], timeout=120)
            try:
                connection.request(
                    "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                return None
            finally:
                connection.close()
            if response.status != 200:
                return None
        return Sample(time.perf_counter() - started)

    return one


def calls_per_route(port: int, question: str) -> int:
    """The calls one route makes (the baseline makes as many)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=120)
    connection.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": question}]}),
        {"Content-Type": "application/json"},
    )
    route = json.loads(connection.getresponse().read())["route"]
    connection.close()
    return int(route["calls"])


def figures(row: Row) -> list[str]:
    """requests, errors, requests/s, p50 and p99 ms."""
    return [
        f"{len(row.samples):,}",
        str(row.errors),
        f"{len(row.samples) / row.seconds:,.1f}",
        f"{1000 * row.latency(0.5):.1f}",
        f"{1000 * row.latency(0.99):.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each row"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    console = Console(width=max(Console().width, 170))

    ports = [free_port() for _ in EXPERTS]
    experts = multiprocessing.get_context("spawn").Process(
        target=serve_experts, args=(ports,), daemon=True
    )
    experts.start()
    server: subprocess.Popen | None = None
    try:
        wait_listening(ports, experts)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            started = time.perf_counter()
            run = build_run(tmp, ports)
            console.print(f"cache and run built in {time.perf_counter() - started:.1f} s")
            from dersim.cache.reader import open_cache

            questions = open_cache(tmp / "cache").questions["question"].to_list()
            port = free_port()
            log = tmp / "serve.log"
            with log.open("wb") as handle:
                endpoints = [
                    f"--base-url={name}=http://{HOST}:{p}/v1"
                    for name, p in zip(EXPERTS, ports, strict=True)
                ]
                server = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dersim",
                        "serve",
                        "--run",
                        str(run),
                        "--port",
                        str(port),
                        *endpoints,
                    ],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "DERSIM_SERVE_TOKEN": ""},
                )
            started = time.perf_counter()
            wait_ready(f"http://{HOST}:{port}/health", server, log)
            console.print(
                f"dersim serve ready in {time.perf_counter() - started:.1f} s; {os.cpu_count()} "
                f"CPUs, {platform.processor() or platform.machine()}; load average "
                f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
            )
            calls = calls_per_route(port, questions[0])
            rows: list[tuple[Row, Row]] = []
            for clients in levels:
                load(clients, args.warmup, dersim_call(port, questions), "warm-up")
                served = load(clients, args.seconds, dersim_call(port, questions), "dersim serve")
                direct = load(clients, args.seconds, direct_call(ports, calls), "direct")
                rows.append((served, direct))
                console.print(
                    f"  {clients} clients: {len(served.samples) / served.seconds:,.0f} requests/s"
                )
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        experts.terminate()
        experts.join()

    table = Table(
        "clients",
        "row",
        "requests",
        "errors",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "experts ms p50",
        "overhead ms p50",
        "overhead ms p99",
        "in route ms p50",
        "x direct p50",
        title=(
            f"dersim serve under load: {calls} expert calls per route, canned HTTP experts on "
            "loopback"
        ),
    )
    for served, direct in rows:
        table.add_row(
            str(served.clients),
            served.name,
            *figures(served),
            f"{1000 * served.median(lambda s: s.expert_s):.1f}",
            f"{1000 * served.overhead(0.5):.1f}",
            f"{1000 * served.overhead(0.99):.1f}",
            f"{1000 * served.median(lambda s: s.route_s - s.expert_s):.1f}",
            f"{served.latency(0.5) / direct.latency(0.5):.1f}",
        )
        table.add_row(str(direct.clients), direct.name, *figures(direct), "", "", "", "", "")
    console.print(table)
    console.print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
