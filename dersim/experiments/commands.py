"""`dersim reproduce` (a click command, registered by dersim.cli)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from dersim.cache.costs import COST_MODES
from dersim.errors import DersimError
from dersim.experiments.plan import QUICK_SEEDS, QUICK_STEPS
from dersim.options import SEEDS, FiniteFloat


def parse_compare(options: tuple[str, ...]) -> dict[str, Path]:
    compare: dict[str, Path] = {}
    for option in options:
        name, sep, path = option.partition("=")
        if not sep or not name.strip() or not path.strip() or "/" in name:
            raise DersimError(f"--compare-cache '{option}': expected NAME=DIR")
        if name in compare:
            raise DersimError(f"--compare-cache '{option}': the name '{name}' is given twice")
        compare[name.strip()] = Path(path.strip())
    return compare


@click.command("reproduce")
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(path_type=Path),
    default=Path("cache/strategyqa"),
    show_default=True,
    help="The cache to reproduce the paper's tables on.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output directory (default: runs/reproduce-<cache>).",
)
@click.option(
    "--seeds", type=SEEDS, default=5, show_default=True, help="Seeds per trained setting."
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=51_200,
    show_default=True,
    help="Env steps per policy (rounded up to whole chunks of 5,120).",
)
@click.option(
    "--quick",
    is_flag=True,
    help=(
        f"{QUICK_SEEDS} seed x at most {QUICK_STEPS:,} steps per policy: every table, in about a "
        "minute."
    ),
)
@click.option(
    "--compare-cache",
    "compare",
    multiple=True,
    metavar="NAME=DIR",
    help=(
        "Another cache of the same questions (e.g. built with another prompt): its DER rows join "
        "the KTP table (repeatable)."
    ),
)
@click.option("--metric", help="Score P (default: bertscore_f1 if the cache has it, as the paper).")
@click.option(
    "--p0",
    type=FiniteFloat(),
    help="Good-enough threshold (default: the 75th percentile of the train "
    "answers' scores; 0.5 for 0/1 scores).",
)
@click.option(
    "--cost-mode",
    type=click.Choice(COST_MODES),
    help="Cost unit (default: params when every expert has a size, else usd).",
)
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the caches' tables.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Discard an earlier reproduction in --out (otherwise it is resumed).",
)
def reproduce_command(
    cache_dir: Path,
    out: Path | None,
    seeds: int,
    steps: int,
    quick: bool,
    compare: tuple[str, ...],
    metric: str | None,
    p0: float | None,
    cost_mode: str | None,
    no_verify: bool,
    overwrite: bool,
) -> None:
    """The DER paper's tables on CACHE: main table, T_max, terminators, knowledge transfer, routing,
    experts per step, route lengths and reward, with 95% bootstrap intervals and seed spread.

    Trains what the tables need in a few grids (resumable: rerun the same command after a kill),
    evaluates on the held-out test questions, and writes tables.md, tables.tex, results.parquet
    and plots into --out.
    """
    from dersim.experiments.outputs import write_plots, write_results
    from dersim.experiments.reproduce import resolve_plan, run_reproduction
    from dersim.locking import directory_lock
    from dersim.ownership import claim_output

    started = time.perf_counter()
    if quick:
        seeds, steps = QUICK_SEEDS, min(steps, QUICK_STEPS)
    out = out or Path("runs") / f"reproduce-{cache_dir.name}"
    console = Console(stderr=True)
    with directory_lock(out, "reproduce"):
        claim_output(out, "reproduction")
        plan = resolve_plan(
            cache_dir, seeds, steps, parse_compare(compare), p0, metric, cost_mode, not no_verify
        )
        if overwrite:
            claim_output(out, "reproduction", overwrite=True)
        console.print(
            f"reproducing on {cache_dir}: metric {plan.metric}, p0 {plan.p0:g}, cost "
            f"{plan.cost_mode}, {plan.seeds} seed(s) x {plan.steps:,} steps, {len(plan.grids)} "
            "grids"
        )
        result = run_reproduction(plan, out, console, verify=not no_verify)
        written = time.perf_counter()
        tables = write_results(result, out)
        plots = write_plots(tables, result, out)
        result.seconds["write tables and plots"] = time.perf_counter() - written
    click.echo((out / "tables.md").read_text(encoding="utf-8"))
    total = time.perf_counter() - started
    console.print(
        "where the time went: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items() if v)
        + f"; total {total:.1f}s"
    )
    console.print(f"wrote {out}/tables.md, tables.tex, results.parquet, {', '.join(plots)}")
