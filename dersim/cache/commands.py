"""`dersim cache info` and `dersim cache verify` (click commands, registered by dersim.cli; the
importers' `dersim cache import` joins the same group there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from dersim.terminal import table_console


@click.group("cache")
def cache_group() -> None:
    """Inspect and check built caches."""


def _interval(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def _sampling_table(sampling: list[dict], voting: dict, metrics: list[str]) -> Table:
    """Each sampled expert's first calls: distinct answers among its k samples, one sample's mean
    score, self-consistency and best-of-k by the reference; then sampling-voting over every
    expert's samples; with 95% intervals."""
    table = Table(
        "expert",
        "k",
        "distinct",
        "baseline",
        *metrics,
        title="sampled experts, first call (mean [95% interval] over questions)",
    )
    labels = (
        ("per_sample", "one sample"),
        ("self_consistency", "self-consistency"),
        ("best_of_k_reference", "best of k (reads the reference)"),
    )
    for e in sampling:
        for row, (key, label) in enumerate(labels):
            table.add_row(
                e["name"] if row == 0 else "",
                str(e["samples"]) if row == 0 else "",
                f"{e['distinct_share']:.0%}" if row == 0 else "",
                label,
                *[_interval(e[key][m]) for m in metrics],
                style="dim" if key == "best_of_k_reference" else None,
                end_section=row == len(labels) - 1,
            )
    table.add_row(
        "all experts",
        str(voting["calls"]),
        "",
        "sampling-voting",
        *[_interval(voting["scores"][m]) for m in metrics],
    )
    return table


@cache_group.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip the sha256 check of the tables against the manifest (for speed on trusted caches; "
    "ids and scores are still checked).",
)
def cache_info_command(directory: Path, as_json: bool, no_verify: bool) -> None:
    """Sizes, per-expert quality and cost, oracle scores of the cache in DIRECTORY.

    Quality by call: each expert's mean score when it makes call d, over every question and
    every route of d - 1 earlier calls (call 1: its own first answers). Answer score quantiles
    show where to put the env's good-enough threshold p0 for each metric. On a sampled cache: per
    sampled expert the share of distinct answers among its k samples, one sample's mean,
    self-consistency, best-of-k by the reference (an oracle), and sampling-voting over every
    expert's samples, with 95% intervals. A damaged cache is refused with one line naming the
    file; "?" marks a value the cache does not know."""
    from dersim.cache.costs import COST_UNITS
    from dersim.cache.info import ANSWER_QUANTILES, cache_summary
    from dersim.cache.reader import open_cache

    summary = cache_summary(open_cache(directory, verify_hashes=not no_verify))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    out = table_console()
    out.print(
        f"[bold]{summary['path']}[/bold]  dataset {summary['dataset']}  depth {summary['depth']}"
    )
    out.print(
        f"questions {summary['questions']}  states {summary['states']} "
        f"{summary['states_per_depth']}  transitions {summary['transitions']}  failed calls "
        f"{summary['failed_calls']}"
    )
    metrics = summary["metrics"]
    table = Table(
        "expert", "params (B)", "calls", "s/call", "USD/call", *[f"{m} @1" for m in metrics]
    )
    table.columns[0].no_wrap = True
    for e in summary["experts"]:
        params = "?" if e["params_b"] is None else f"{e['params_b']:g}"
        table.add_row(
            e["name"],
            params,
            str(e["calls"]),
            _fmt(e["mean_latency_s"], 3),
            _fmt(e["mean_cost_usd"], 6),
            *[_fmt(e["depth1"][m]) for m in metrics],
        )
    for label, key in (
        ("oracle: best expert/q", "oracle_single_call"),
        ("oracle: best state/q", "oracle_any_state"),
    ):
        table.add_row(label, "", "", "", "", *[_fmt(summary[key].get(m)) for m in metrics])
    for q in ANSWER_QUANTILES:
        table.add_row(
            f"answers: {q:.0%} score <=",
            "",
            "",
            "",
            "",
            *[_fmt(summary["answer_score_quantiles"][m][f"{q:g}"]) for m in metrics],
            style="dim",
        )
    out.print(table)
    if summary["sampling"]:
        out.print(_sampling_table(summary["sampling"], summary["sampling_voting"], metrics))
    if summary["depth"] > 1 and not summary["sampling"]:
        steps = Table(
            "expert",
            "call",
            *metrics,
            title="mean score when the expert makes call d "
            "(over every route of d - 1 earlier calls)",
        )
        for e in summary["experts"]:
            for d in range(summary["depth"]):
                steps.add_row(
                    e["name"] if d == 0 else "",
                    str(d + 1),
                    *[_fmt(e["by_step"][m][d]) for m in metrics],
                    end_section=d == summary["depth"] - 1,
                )
        out.print(steps)
    sizes = {e["name"]: e["params_b"] for e in summary["experts"]}
    scales = ", ".join(
        f"{mode} {'?' if v is None else f'{v:.4g} {COST_UNITS[mode]}'}"
        for mode, v in summary["cost_scale"].items()
    )
    out.print(
        "cost scale (--cost-scale auto: the dearest expert's mean cost per call on train; alpha = "
        f"1 prices such a call at the whole score range): {scales}"
    )
    if summary["sampling"]:
        out.print(
            "sampled cache: self-consistency votes by the task's answer (majority) or, for free "
            "text, by embedding (the medoid sample); route figures need draws over children and "
            "are not shown"
        )
    for metric, best in summary["best_fixed_route"].items():
        if best:
            cost = (
                "?"
                if any(sizes[name] is None for name in best["route"])
                else f"{best['params_b']:g}"
            )
            out.print(
                f"best fixed route by {metric}: {' -> '.join(best['route'])}  "
                f"score {best['score']:.4f}  cost {cost} B params"
            )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


@cache_group.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
def cache_verify_command(directory: Path) -> None:
    """Check schema, hashes, referential integrity and completeness to depth D (exit 1 on any
    problem)."""
    from dersim.cache.verify import verify_cache

    problems = verify_cache(directory)
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{directory}: ok")


@cache_group.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="The merged cache's directory."
)
def cache_merge_command(shards: tuple[Path, ...], out: Path) -> None:
    """Join the shard caches SHARDS (`build-cache --shard I/N`, all N of them, one recipe) into the
    cache a single build would have written (the same ids and table bytes)."""
    from dersim.cache.merge import merge_caches
    from dersim.locking import directory_lock
    from dersim.ownership import claim_output

    with directory_lock(out, "merge"):
        claim_output(out, "cache")
        manifest = merge_caches(list(shards), out)
    click.echo(
        f"{out}: merged {len(shards)} shards, {sum(manifest['dataset']['splits'].values())} "
        "questions"
    )
