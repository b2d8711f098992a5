"""`dersim train` and `dersim eval` (click commands, registered by dersim.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dersim.env import COST_MODES, TERMINATORS
from dersim.env.tables import EnvSpec
from dersim.errors import DersimError
from dersim.trainer.ppo import PPOConfig

DEFAULT_CACHES = (Path("cache/strategyqa"), Path("cache/synthetic"))


def default_cache() -> Path:
    for path in DEFAULT_CACHES:
        if (path / "manifest.json").exists():
            return path
    raise DersimError("no --cache given and no bundled cache found (cache/strategyqa); build one with "
                      "`dersim build-cache builders/synthetic.toml`")


@click.command("train")
@click.option("--vectorized", is_flag=True, help="Train every policy of the grid at once in one jitted program.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path),
              help="Cache directory (default: cache/strategyqa).")
@click.option("--seeds", type=click.IntRange(min=1), default=4, show_default=True, help="Seeds per grid point.")
@click.option("--grid", multiple=True, metavar="NAME=V1,V2",
              help="Vary a per-policy setting (repeatable): lr, ent_coef, clip_eps, vf_coef, discount, gae_lambda, "
                   "alpha, beta, gamma, p0, t_max, terminator.")
@click.option("--steps", type=click.IntRange(min=1), default=50_000, show_default=True, help="Env steps per policy.")
@click.option("--num-envs", type=click.IntRange(min=1), default=16, show_default=True, help="Parallel envs per policy.")
@click.option("--rollout", type=click.IntRange(min=1), default=16, show_default=True, help="Steps per env per update.")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True, help="PPO epochs per update.")
@click.option("--minibatches", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True, help="MLP width.")
@click.option("--chunk-updates", type=click.IntRange(min=1), default=20, show_default=True,
              help="PPO updates per jitted chunk (progress, curves and checkpoints happen between chunks).")
@click.option("--metric", help="Score P (default: bertscore_f1 if the cache has it).")
@click.option("--cost-mode", type=click.Choice(COST_MODES), default="params", show_default=True)
@click.option("--terminator", type=click.Choice(TERMINATORS), default="oracle", show_default=True)
@click.option("--t-max", type=click.IntRange(min=1), help="Calls per episode at most (default: the cache's depth).")
@click.option("--alpha", type=float, default=0.001, show_default=True, help="Cost weight.")
@click.option("--beta", type=float, default=5.0, show_default=True, help="Improvement weight.")
@click.option("--gamma", type=float, default=2.0, show_default=True, help="Terminal bonus/penalty.")
@click.option("--p0", type=float, default=0.73, show_default=True,
              help="Good-enough threshold on the metric (the paper's 0.73 was set for another BERTScore model: "
                   "recalibrate it, see `dersim cache info`).")
@click.option("--embedding-dim", type=click.IntRange(min=1), metavar="K",
              help="Observe the top K principal components of the state embeddings (fitted on the train split) "
                   "instead of all d: the first layer, most of PPO's arithmetic, shrinks by d / K.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<cache name>).")
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option("--stop-after-chunks", type=click.IntRange(min=1),
              help="Train at most this many chunks now; continue later with --resume.")
@click.option("--quiet", is_flag=True, help="No progress bar and no table.")
def train_command(vectorized: bool, cache_dir: Path | None, seeds: int, grid: tuple[str, ...], steps: int,
                  num_envs: int, rollout: int, epochs: int, minibatches: int, hidden: int, chunk_updates: int,
                  metric: str | None, cost_mode: str, terminator: str, t_max: int | None, alpha: float, beta: float,
                  gamma: float, p0: float, embedding_dim: int | None, out: Path | None, resume: bool,
                  stop_after_chunks: int | None, quiet: bool) -> None:
    """Train DER routing policies with PPO on a cache, then evaluate them on its test split.

    With --vectorized, every policy of the grid trains at once in one jitted program against the
    JAX env; without it, one policy (--seeds 1, no --grid) trains step by step against the
    reference Gymnasium env: the same algorithm, for comparison and debugging.
    """
    from dersim.evaluation.outputs import print_table, write_outputs
    from dersim.evaluation.report import evaluate
    from dersim.trainer.grid import parse_grid
    from dersim.trainer.run import GridTrainer

    if (num_envs * rollout) % minibatches:
        raise DersimError(f"--num-envs x --rollout ({num_envs * rollout}) must be divisible by --minibatches")
    cache = cache_dir or default_cache()
    spec = EnvSpec(split="train", metric=metric, cost_mode=cost_mode, t_max=t_max, terminator=terminator,
                   alpha=alpha, beta=beta, gamma=gamma, p0=p0, embedding_dim=embedding_dim)
    config = PPOConfig(num_envs=num_envs, num_steps=rollout, update_epochs=epochs, num_minibatches=minibatches,
                       hidden=hidden, updates_per_chunk=chunk_updates)
    run_dir = out or Path("runs") / cache.name
    trainer = GridTrainer.from_grid(cache, run_dir, spec, config, parse_grid(grid), seeds, steps)
    if not vectorized:
        from dersim.trainer.stepwise import train_stepwise

        if resume or stop_after_chunks:
            raise DersimError("--resume and --stop-after-chunks need --vectorized")
        runner, curves, _ = train_stepwise(trainer, show_progress=not quiet)
    else:
        runner, curves = trainer.train(resume=resume, show_progress=not quiet, stop_after=stop_after_chunks)
    if vectorized and not trainer.finished:
        click.echo(f"stopped after chunk {curves['chunk'].max() + 1} of {trainer.n_chunks}; continue with --resume")
        return
    policies, baselines = evaluate(trainer, runner, "test")
    write_outputs(run_dir, policies, baselines, curves, trainer.tables.metric, "test")
    if not quiet:
        print_table(policies, baselines, trainer.tables.metric, "test")
        click.echo(f"run written to {run_dir} (runs.parquet, curves.parquet, curves.png, pareto.png, summary.md)")


@click.command("eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True,
              help="A `dersim train` run directory.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), help="Cache (default: the run's).")
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Policies shown.")
@click.option("--json", "as_json", is_flag=True, help="Every policy and baseline as JSON on stdout.")
def eval_command(run_dir: Path, cache_dir: Path | None, split: str, top: int, as_json: bool) -> None:
    """Greedy policies of a run on held-out questions, beside baselines and oracles (and a Pareto plot)."""
    from dersim.evaluation.outputs import print_table
    from dersim.evaluation.plots import plot_pareto
    from dersim.evaluation.report import evaluate
    from dersim.trainer.checkpoint import load_checkpoint
    from dersim.trainer.run import GridTrainer

    trainer = GridTrainer.from_run(run_dir, cache_dir)
    runner = load_checkpoint(run_dir, {"runner": trainer.init(), "chunk": 0})["runner"]
    policies, baselines = evaluate(trainer, runner, split)
    plot_pareto(policies, baselines, trainer.tables.metric, run_dir / f"pareto_{split}.png")
    if as_json:
        click.echo(json.dumps({"metric": trainer.tables.metric, "split": split, "policies": policies.to_dicts(),
                               "baselines": baselines.to_dicts()}, indent=2))
    else:
        print_table(policies, baselines, trainer.tables.metric, split, top)
