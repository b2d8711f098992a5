"""The builder against a loopback fleet: calls/s, the builder's CPU per call, peak memory, journal.

A synthetic recipe (generated questions, `--experts` HTTP experts, depth `--depth`) is built
against `--replicas` synthetic OpenAI-compatible replicas on 127.0.0.1 (`dersim.builder.fleet`,
answering at once, in this process's threads). Reported: calls made, wall time and calls/s,
the whole process's CPU seconds per call (builder, HTTP client and the replicas together, so an
upper bound of the builder's own), peak RSS, the journal's size on disk and the time to reopen
it, and the calls per replica. The issue's target scale is 100k questions x 5 experts x depth 2
(about 3 million calls); the default here is a size that runs in minutes on 2 cores.

    python benchmarks/build_fleet.py [--questions 2000] [--experts 5] [--depth 2] [--replicas 4]
                                     [--in-process]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dersim.builder.build import build_cache
from dersim.builder.fleet import fleet
from dersim.builder.journal import CallJournal
from dersim.recipe import load_recipe


def recipe_text(questions: int, experts: int, depth: int, base_urls: list[str]) -> str:
    urls = ", ".join(f'"{u}"' for u in base_urls)
    blocks = "".join(
        f"""
[[experts]]
name = "e{i}"
backend = "openai"
model = "model-{i}"
params_b = {i + 1}.0
max_new_tokens = 16
options = {{ base_url = [{urls}], timeout_s = 30, max_concurrency = 4 }}
"""
        for i in range(experts)
    )
    train = questions * 2 // 3
    return f"""
name = "fleet-bench"
[dataset]
source = "synthetic"
topics = ["history", "science", "sports"]
train = {train}
test = {questions - train}
seed = 0
[build]
depth = {depth}
retries = 1
backoff_s = 0.01
concurrency = {4 * len(base_urls)}
flush_every = 512
[metrics]
names = ["token_f1"]
[embedding]
model = "hashing"
dim = 16
{blocks}"""


def serve_replica(connection: Connection) -> None:
    """A child process: one replica; sends its base URL, then its answered count when told to."""
    with fleet(1) as (replica,):
        connection.send(replica.base_url)
        connection.recv()
        connection.send(replica.answered)


@contextmanager
def replica_processes(n: int) -> Iterator[tuple[list[str], list[int]]]:
    """`n` replicas in child processes: yields their base URLs and, after the block, the calls
    each answered."""
    answered: list[int] = []
    pipes, children = [], []
    for _ in range(n):
        ours, theirs = multiprocessing.Pipe()
        child = multiprocessing.Process(target=serve_replica, args=(theirs,), daemon=True)
        child.start()
        pipes.append(ours)
        children.append(child)
    try:
        yield [pipe.recv() for pipe in pipes], answered
    finally:
        for pipe in pipes:
            pipe.send("stop")
        answered += [pipe.recv() for pipe in pipes]
        for child in children:
            child.join()


@contextmanager
def replica_threads(n: int) -> Iterator[tuple[list[str], list[int]]]:
    answered: list[int] = []
    with fleet(n) as replicas:
        yield [r.base_url for r in replicas], answered
        answered += [r.answered for r in replicas]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--experts", type=int, default=5)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--in-process", action="store_true", help="Replicas in this process.")
    args = parser.parse_args()
    serve = replica_threads if args.in_process else replica_processes
    with tempfile.TemporaryDirectory() as tmp, serve(args.replicas) as (urls, answered):
        root = Path(tmp)
        (root / "r.toml").write_text(
            recipe_text(args.questions, args.experts, args.depth, urls), encoding="utf-8"
        )
        cpu, wall = time.process_time(), time.perf_counter()
        report = build_cache(load_recipe(root / "r.toml"), root / "cache", show_progress=False)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        journal = root / "cache" / "journal"
        size_mb = sum(f.stat().st_size for f in journal.iterdir()) / 1e6
        reopened = time.perf_counter()
        shards = CallJournal(journal).shards()
        reopened = time.perf_counter() - reopened
    calls = report.calls_made
    whose = "builder + client + replicas" if args.in_process else "builder + HTTP client"
    rows = {
        "questions x experts x depth": f"{args.questions:,} x {args.experts} x {args.depth}",
        "calls made": f"{calls:,}",
        "wall": f"{wall:,.1f} s ({calls / wall:,.0f} calls/s)",
        "expansion (calls)": f"{report.seconds['expand']:,.1f} s",
        "CPU per call": f"{cpu / calls * 1e3:.2f} ms ({whose})",
        "peak RSS": f"{peak_mb:,.0f} MB",
        "journal on disk": f"{size_mb:,.1f} MB in {shards} shards; reopened in {reopened:.2f} s",
        "calls per replica": ", ".join(f"{n:,}" for n in answered),
        "machine": f"{os.cpu_count()} CPUs",
    }
    table = Table(title=f"build against {args.replicas} loopback replicas")
    for column in ("figure", "value"):
        table.add_column(column)
    for name, value in rows.items():
        table.add_row(name, value)
    Console().print(table)


if __name__ == "__main__":
    main()
