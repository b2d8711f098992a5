"""`dersim eval` (a click command, registered by dersim.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dersim.cache.costs import COST_UNITS


@click.command("eval")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="A `dersim train` run directory.",
)
@click.option(
    "--cache", "cache_dir", type=click.Path(path_type=Path), help="Cache (default: the run's)."
)
@click.option(
    "--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Deployable policies shown.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Every policy and baseline as JSON on stdout."
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip the sha256 check of the cache's tables (trusted caches).",
)
def eval_command(
    run_dir: Path, cache_dir: Path | None, split: str, top: int, as_json: bool, no_verify: bool
) -> None:
    """Greedy policies of a run on held-out questions, beside baselines and reference rows.

    The best policy is the deployable one with the best val score; rows that read the reference
    (oracle stop, oracle picks) are marked. Writes runs.parquet and summary.md (for the run's own
    cache and the test split), prints the table, then draws the cost-quality plot
    pareto_<split>.png.
    """
    import polars as pl

    from dersim.evaluation.outputs import print_table, write_results
    from dersim.evaluation.plots import plot_pareto
    from dersim.evaluation.report import evaluate
    from dersim.locking import directory_lock
    from dersim.trainer.checkpoint import check_run_cache
    from dersim.trainer.run import CURVES, GridTrainer

    check_run_cache(
        run_dir, cache_dir
    )  # another cache's answers would score the run's policies on other experts
    trainer = GridTrainer.from_run(run_dir, cache_dir, verify=not no_verify)
    own = cache_dir is None or cache_dir.resolve() == trainer.run_cache.resolve()
    with directory_lock(
        run_dir, "eval"
    ):  # fails fast, before the work, if the run directory is read-only
        evaluation = evaluate(trainer, trainer.kept_params(trainer.load()), split)
        if own and split == "test":
            write_results(run_dir, evaluation, pl.read_parquet(run_dir / CURVES))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "metric": evaluation.metric,
                    "metrics": evaluation.metrics,
                    "split": split,
                    "cost_mode": evaluation.cost_mode,
                    "cost_unit": COST_UNITS[evaluation.cost_mode],
                    "best_policy": evaluation.best_policy,
                    "chosen_on": evaluation.chosen_on,
                    "judge_accuracy": evaluation.judge,
                    "policies": evaluation.policies.to_dicts(),
                    "baselines": evaluation.baselines.to_dicts(),
                },
                indent=2,
            )
        )
    else:
        print_table(evaluation, top)
    suffix = split if own else f"{split}_{(cache_dir or run_dir).name}"
    with directory_lock(run_dir, "eval"):
        plot_pareto(evaluation, run_dir / f"pareto_{suffix}.png")
