"""How long `dersim routers` takes per router on the bundled caches, and what the replay saves.

Per cache and router: the seconds `dersim routers` spends on it (choosing hyperparameters on val,
refitting, routing the whole sweep and replaying every route through the cache), the expert calls
its test routes make, and the time those calls would take live, estimated from the cache's own
recorded seconds per call (RouterBench records none: n/a). The ratio is how many times faster the
replay is than calling the LLMs, for the curve on the test questions alone. The bootstrap of every
figure is timed separately.

    python benchmarks/routers_speed.py [--caches cache/strategyqa,cache/math,cache/routerbench-mbpp]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from dersim.cache.files import read_columns
from dersim.cache.schema import TRANSITIONS
from dersim.routers.data import load_router_data
from dersim.routers.evaluate import compare
from dersim.routers.registry import ROUTERS

CACHES = "cache/strategyqa,cache/math,cache/routerbench-mbpp"


def seconds_per_call(cache: Path) -> float:
    """Mean recorded seconds of the cache's calls (0 when none were recorded)."""
    latency = read_columns(cache / TRANSITIONS, ["latency_s"])["latency_s"]
    return float(pc.mean(latency).as_py() or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caches", default=CACHES)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    console.print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for cache in map(Path, args.caches.split(",")):
        started = time.perf_counter()
        data = load_router_data(cache)
        loaded = time.perf_counter() - started
        result = compare(data, list(ROUTERS), seeds=args.seeds)
        per_call = seconds_per_call(cache)
        table = Table(
            "router",
            "seconds",
            "test calls replayed",
            "live LLM seconds (est.)",
            "x faster than live",
            title=f"{cache}: {result.n_questions} test questions, {data.n_experts} experts",
        )
        for curve in result.curves:
            calls = float(curve.calls.sum())
            live = calls * per_call
            table.add_row(
                curve.name,
                f"{curve.seconds:.2f}",
                f"{calls:,.0f}",
                f"{live:,.0f}" if per_call else "n/a",
                f"{live / curve.seconds:,.0f}" if per_call and curve.seconds > 0 else "n/a",
            )
        console.print(table)
        routing = sum(c.seconds for c in result.curves)
        console.print(
            f"load {loaded:.1f} s, routing {routing:.1f} s, bootstrap "
            f"{result.bootstrap_seconds:.1f} s ({result.n_boot} resamples); the bootstrap is "
            f"{result.bootstrap_seconds / routing:.2f}x the routing; skipped: "
            f"{', '.join(result.skipped) or 'none'}"
        )
        if np.isfinite(per_call) and per_call:
            console.print(f"recorded seconds per call: {per_call:.3f}")


if __name__ == "__main__":
    main()
