"""`dersim routers` (a click command, registered by dersim.cli)."""

from __future__ import annotations

from pathlib import Path

import click

from dersim.cache.costs import COST_MODES
from dersim.options import SEEDS, FiniteFloat
from dersim.routers.cascade import JUDGES
from dersim.routers.registry import ROUTERS


@click.command("routers")
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(path_type=Path),
    default=Path("cache/strategyqa"),
    show_default=True,
    help="The cache every router is judged on.",
)
@click.option(
    "--routers",
    "names",
    metavar="A,B,...",
    help=f"Routers to compare (default: all): {', '.join(ROUTERS)}.",
)
@click.option(
    "--run",
    "run_dirs",
    type=click.Path(path_type=Path),
    multiple=True,
    help=(
        "A `dersim train` run on this cache (repeatable): its DER policies join the table, one "
        "curve per algorithm, hyperparameters chosen on the run's val questions."
    ),
)
@click.option(
    "--split",
    type=click.Choice(["test", "val"]),
    default="test",
    show_default=True,
    help="Where figures are reported (hyperparameters are always chosen on val).",
)
@click.option(
    "--cost-mode",
    type=click.Choice(COST_MODES),
    help="Cost of a call (default: params when every expert has a size, else usd).",
)
@click.option(
    "--metric",
    help="Score column (default: bertscore_f1 if cached, else the cache's first metric).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output directory (default: runs/routers/<cache name>).",
)
@click.option(
    "--seeds",
    type=SEEDS,
    default=3,
    show_default=True,
    help="Seeds of the stochastic routers (mean +- std).",
)
@click.option(
    "--bootstrap",
    "n_boot",
    type=click.IntRange(min=10, max=100_000),
    default=1000,
    show_default=True,
    help="Bootstrap resamples of the questions for the 95% intervals.",
)
@click.option(
    "--val-fraction",
    type=FiniteFloat(0.0, 1.0, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of the cache's train questions held out to choose hyperparameters.",
)
@click.option(
    "--judge",
    type=click.Choice(JUDGES),
    default="learned",
    show_default=True,
    help="The cascades' judge: learned (deployable) or oracle (reads the reference; rows marked).",
)
@click.option(
    "--judge-error",
    type=FiniteFloat(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Flip the cascades' judge decision on this share of answers (RouterBench's noisy judge).",
)
@click.option(
    "--p0",
    type=FiniteFloat(0.0, 1.0),
    help=(
        "Good-enough score the learned judge predicts (default: 0.5 for 0/1 scores, else the "
        "median train answer score)."
    ),
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip the sha256 check of the cache's tables (trusted caches).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print routers.json on stdout instead of the table."
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def routers_command(
    cache_dir: Path,
    names: str | None,
    run_dirs: tuple[Path, ...],
    split: str,
    cost_mode: str | None,
    metric: str | None,
    out: Path | None,
    seeds: int,
    n_boot: int,
    val_fraction: float,
    judge: str,
    judge_error: float,
    p0: float | None,
    no_verify: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Compare the literature's routers (and a run's DER policies) on one cache.

    Each router is fitted on the cache's train questions (hyperparameters chosen on val), swept over
    its willingness to pay, and its routes are replayed through the cache. Prints AIQ, APGR,
    CPT(50%), CPT(80%), the best score within the best single expert's cost and the cost to match
    it, each with a 95% bootstrap interval, and the time per router; writes routers.md,
    routers.json, curves.parquet and routers.png to --out.
    """
    from dersim.locking import directory_lock
    from dersim.ownership import claim_output
    from dersim.routers.base import RouterOptions
    from dersim.routers.data import load_router_data
    from dersim.routers.der import der_curves
    from dersim.routers.evaluate import compare
    from dersim.routers.outputs import JSON, PLOT, print_table, write_results
    from dersim.routers.plots import plot_curves
    from dersim.routers.registry import parse_names

    chosen = parse_names(names)
    out = out or Path("runs") / "routers" / cache_dir.name
    with directory_lock(out, "routers"):
        claim_output(out, "routers")
        data = load_router_data(cache_dir, metric, cost_mode, val_fraction, verify=not no_verify)
        extra = [
            curve
            for run_dir in run_dirs
            for curve in der_curves(
                run_dir,
                data,
                split,
                verify=not no_verify,
                suffix=f" ({run_dir})" if len(run_dirs) > 1 else "",
            )
        ]

        def progress(name: str) -> None:
            if not quiet:
                click.echo(f"routing: {name} ({chosen.index(name) + 1}/{len(chosen)})", err=True)

        comparison = compare(
            data,
            chosen,
            split,
            RouterOptions(judge, judge_error, p0),
            seeds,
            n_boot,
            extra,
            progress,
        )
        write_results(out, comparison, cache_dir)
        if as_json:
            click.echo((out / JSON).read_text(encoding="utf-8"))
        else:
            print_table(comparison)
        plot_curves(comparison, out / PLOT)
    if not as_json:
        click.echo(f"wrote {out}/ (routers.md, {JSON}, curves.parquet, {PLOT})")
