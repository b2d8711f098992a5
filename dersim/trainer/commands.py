"""`dersim train` (a click command, registered by dersim.cli)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from rich.console import Console

from dersim.cache.costs import AUTO, COST_MODES
from dersim.cache.splits import DEFAULT_VAL_FRACTION
from dersim.env import REWARDS, TERMINATORS
from dersim.env.tables import EnvSpec
from dersim.errors import DersimError
from dersim.locking import directory_lock
from dersim.options import SEEDS
from dersim.ownership import claim_output
from dersim.trainer.algorithms import ALGOS, DEFAULT_ALGO
from dersim.trainer.exact_pg import FullInfoConfig
from dersim.trainer.ppo import PPOConfig

DEFAULT_CACHES = (Path("cache/strategyqa"), Path("cache/synthetic"))


def default_cache() -> Path:
    for path in DEFAULT_CACHES:
        if (path / "manifest.json").exists():
            return path
    raise DersimError(
        "no --cache given and no bundled cache found (cache/strategyqa); build one with "
        "`dersim build-cache builders/synthetic.toml`"
    )


def parse_cost_scale(_ctx: click.Context, _param: click.Parameter, value: str) -> str | float:
    if value == AUTO:
        return AUTO
    try:
        scale = float(value)
    except ValueError:
        raise click.BadParameter(f"'{value}': expected 'auto' or a positive number") from None
    if not np.isfinite(scale) or scale <= 0:
        raise click.BadParameter(f"'{value}': expected 'auto' or a positive number")
    return scale


@click.command("train")
@click.option(
    "--vectorized", is_flag=True, help="Train every policy of the grid at once in jitted programs."
)
@click.option(
    "--algo",
    type=click.Choice(ALGOS),
    default=DEFAULT_ALGO,
    show_default=True,
    help=(
        "fqi: fitted Q-iteration from every outcome the cache holds; exact-pg: gradient ascent on "
        "the exact expected return; ppo: the paper's PPO from sampled episodes. --grid algo=... "
        "mixes them (val chooses among all)."
    ),
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(path_type=Path),
    help="Cache directory (default: cache/strategyqa).",
)
@click.option("--seeds", type=SEEDS, default=4, show_default=True, help="Seeds per grid point.")
@click.option(
    "--grid",
    multiple=True,
    metavar="NAME=V1,V2",
    help="Vary a per-policy setting (repeatable): algo, lr, ent_coef, clip_eps, vf_coef, discount, "
    "gae_lambda, l2, regressor, fqi_target, alpha, beta, gamma, p0, t_max, terminator, reward, "
    "judge_error, judge_threshold. A key an algorithm does not use does not multiply its policies.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help=(
        "PPO: env steps per policy (rounded up to whole chunks of num-envs x rollout x "
        "chunk-updates)."
    ),
)
@click.option(
    "--updates",
    type=click.IntRange(min=1),
    default=FullInfoConfig.updates,
    show_default=True,
    help=(
        "exact-pg: gradient steps per policy; fqi with the MLP regressor: regression steps per "
        "sweep."
    ),
)
@click.option(
    "--minibatch-questions",
    type=click.IntRange(min=1),
    help="exact-pg: train questions per gradient step (default: all of them, the exact gradient).",
)
@click.option(
    "--last-action-obs/--no-last-action-obs",
    default=True,
    show_default=True,
    help="Policies observe which expert answered last (a router knows whom it called), besides the "
    "state's embedding and the step.",
)
@click.option(
    "--num-envs",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Parallel envs per policy.",
)
@click.option(
    "--rollout",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Steps per env per update.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="PPO epochs per update.",
)
@click.option("--minibatches", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--hidden", type=click.IntRange(min=1), default=64, show_default=True, help="MLP width."
)
@click.option(
    "--chunk-updates",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help=(
        "PPO or exact-pg updates per jitted chunk (val checks, curves and checkpoints happen "
        "between chunks)."
    ),
)
@click.option("--metric", help="Score P (default: bertscore_f1 if the cache has it).")
@click.option(
    "--reward",
    type=click.Choice(REWARDS),
    default="final",
    show_default=True,
    help="final: only the episode's last answer is paid (P + -gamma), every call costs alpha x C; "
    "paper: every call earns its answer's P (+ beta x improvement).",
)
@click.option(
    "--terminator",
    type=click.Choice(TERMINATORS),
    default="learned",
    show_default=True,
    help=(
        "learned: the policy STOPs; judge: a classifier fitted on train states stops; none: always "
        "T_max calls; oracle: stops when the answer reaches p0 by the reference (not deployable)."
    ),
)
@click.option(
    "--cost-mode",
    type=click.Choice(COST_MODES),
    default="params",
    show_default=True,
    help="Cost C of a call: params (B), tokens (k), latency (s), latency_norm, usd.",
)
@click.option(
    "--cost-scale",
    default=AUTO,
    show_default=True,
    callback=parse_cost_scale,
    help=(
        "Divides C in the reward. auto: the dearest expert's mean cost per call on train, so alpha "
        "= 1 means the dearest call costs the whole score range; 1: the paper's raw units."
    ),
)
@click.option(
    "--t-max",
    type=click.IntRange(min=1),
    help="Calls per episode at most (default: the cache's depth).",
)
@click.option(
    "--alpha", type=float, default=0.05, show_default=True, help="Cost weight (on C / cost scale)."
)
@click.option(
    "--beta",
    type=float,
    default=5.0,
    show_default=True,
    help="Improvement weight (paper reward only).",
)
@click.option(
    "--gamma",
    type=float,
    default=0.0,
    show_default=True,
    help=(
        "Bonus (+) or penalty (-) at the end for reaching p0 or not (the paper uses 2; 0 leaves "
        "the pure score-cost trade-off)."
    ),
)
@click.option(
    "--p0",
    type=float,
    default=0.73,
    show_default=True,
    help=(
        "Good-enough threshold on the metric (the paper's 0.73 was set for another BERTScore "
        "model: recalibrate it, see `dersim cache info`)."
    ),
)
@click.option(
    "--judge-error",
    type=float,
    default=0.0,
    show_default=True,
    help=(
        "Oracle terminator: flip its stop decision on this share of states (RouterBench's noisy "
        "judge)."
    ),
)
@click.option(
    "--judge-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="Judge terminator: stop when the judge's probability of 'good enough' reaches this.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=DEFAULT_VAL_FRACTION,
    show_default=True,
    help="Share of the cache's train questions held out as val (never trained on; policies and "
    "checkpoints are chosen on it).",
)
@click.option(
    "--split-seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the val split and oracle noise.",
)
@click.option(
    "--keep",
    type=click.Choice(["best", "last"]),
    default="best",
    show_default=True,
    help="Keep each policy's checkpoint with the best greedy val return, or its last.",
)
@click.option(
    "--shard-states",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="On several devices, split the cache's state tables across them along the state axis "
    "(auto: when they would fill over a quarter of one device's memory); policies are always "
    "split across the devices.",
)
@click.option(
    "--embedding-dim",
    type=click.IntRange(min=1),
    metavar="K",
    help=(
        "Observe the top K principal components of the state embeddings (fitted on the train "
        "split) instead of all d: the first layer, most of PPO's arithmetic, shrinks by d / K."
    ),
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<cache name>)."
)
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip the sha256 check of the cache's tables (trusted caches).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option(
    "--stop-after-chunks",
    type=click.IntRange(min=1),
    help="Train at most this many chunks now; continue later with --resume.",
)
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
def train_command(
    vectorized: bool,
    algo: str,
    cache_dir: Path | None,
    seeds: int,
    grid: tuple[str, ...],
    steps: int,
    updates: int,
    minibatch_questions: int | None,
    last_action_obs: bool,
    num_envs: int,
    rollout: int,
    epochs: int,
    minibatches: int,
    hidden: int,
    chunk_updates: int,
    metric: str | None,
    reward: str,
    terminator: str,
    cost_mode: str,
    cost_scale: str | float,
    t_max: int | None,
    alpha: float,
    beta: float,
    gamma: float,
    p0: float,
    judge_error: float,
    judge_threshold: float,
    val_fraction: float,
    split_seed: int,
    keep: str,
    shard_states: str,
    embedding_dim: int | None,
    out: Path | None,
    resume: bool,
    no_verify: bool,
    overwrite: bool,
    stop_after_chunks: int | None,
    quiet: bool,
) -> None:
    """Train DER routing policies on a cache's train questions, choosing on its val questions.

    With --vectorized, the policies of each algorithm of the grid train at once in one jitted
    program; without it, one PPO policy (--algo ppo --seeds 1, no --grid) trains step by step
    against the reference Gymnasium env: the same algorithm, for comparison and debugging.
    Evaluate the run on the held-out test questions with `dersim eval --run DIR`.
    """
    from dersim.trainer.grid import parse_grid
    from dersim.trainer.plots import plot_curves
    from dersim.trainer.run import GridTrainer

    if (num_envs * rollout) % minibatches:
        raise DersimError(
            f"--num-envs x --rollout ({num_envs * rollout}) must be divisible by --minibatches"
        )
    if resume and overwrite:
        raise DersimError("--resume and --overwrite exclude each other")
    if not vectorized and (resume or stop_after_chunks):
        raise DersimError("--resume and --stop-after-chunks need --vectorized")
    cache = cache_dir or default_cache()
    spec = EnvSpec(
        split="train",
        metric=metric,
        cost_mode=cost_mode,
        cost_scale=cost_scale,
        t_max=t_max,
        terminator=terminator,
        reward=reward,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        p0=p0,
        judge_error=judge_error,
        judge_threshold=judge_threshold,
        val_fraction=val_fraction,
        split_seed=split_seed,
        embedding_dim=embedding_dim,
        last_action_obs=last_action_obs,
    )
    config = PPOConfig(
        num_envs=num_envs,
        num_steps=rollout,
        update_epochs=epochs,
        num_minibatches=minibatches,
        hidden=hidden,
        updates_per_chunk=chunk_updates,
    )
    full_info = FullInfoConfig(
        updates=updates, updates_per_chunk=chunk_updates, minibatch_questions=minibatch_questions
    )
    run_dir = out or Path("runs") / cache.name
    with directory_lock(run_dir, "train"):
        existing = claim_output(run_dir, "run")
        if existing and not (resume or overwrite):
            raise DersimError(
                f"{run_dir}: already holds a run; pass --resume to continue it or --overwrite to "
                "replace it"
            )
        trainer = GridTrainer.from_grid(
            cache,
            run_dir,
            spec,
            config,
            parse_grid(grid),
            seeds,
            steps,
            keep,
            verify=not no_verify,
            algo=algo,
            full_info=full_info,
            shard_states=shard_states,
        )
        console = Console(stderr=True, quiet=quiet)
        chunk_steps = config.steps_per_chunk
        if steps % chunk_steps and any(p["algo"] == "ppo" for p in trainer.policies):
            chunks = -(-steps // chunk_steps)
            console.print(
                f"--steps {steps:,} rounds up to {chunks} chunk(s) of {chunk_steps:,}: "
                f"{chunks * chunk_steps:,} env steps per PPO policy"
            )
        if overwrite:
            claim_output(run_dir, "run", overwrite=True)
        if not vectorized:
            from dersim.trainer.stepwise import train_stepwise

            state, curves, _ = train_stepwise(trainer, show_progress=not quiet)
        else:
            state, curves = trainer.train(
                resume=resume, show_progress=not quiet, stop_after=stop_after_chunks
            )
        if vectorized and not trainer.finished:
            console.print(
                f"stopped after chunk {int(state.chunk)} of {trainer.n_chunks}; continue with "
                "--resume"
            )
            return
        best = trainer.best_on_val(state)
        plot_curves(curves, [best["policy"]] if best else [], run_dir / "curves.png")
        if best:
            console.print(
                f"best on val: policy {best['policy']}, {trainer.policies[best['policy']]['algo']} "
                f"(val {trainer.tables.metric} {best['val_score']:.4f}, {best['val_calls']:.2f} "
                f"calls, cost {best['val_cost']:.4g} per question)"
            )
        console.print(
            f"run written to {run_dir} (run.json, checkpoint.msgpack, curves.parquet, curves.png); "
            f"evaluate it on the test split with: dersim eval --run {run_dir}"
        )
