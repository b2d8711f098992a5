"""Training throughput: whole-PPO env-steps/s (rollout + update) of the vectorized grid trainer at
1, 16, 256 and 1024 policies, against the same PPO on the Gymnasium reference env and against
stable-baselines3 PPO, all in one run on the same cache.

Targets on a 2-core CPU: >= 100x stable-baselines3 PPO in aggregate env-steps/s (summed over the
policies trained at once), and 1024 policies x 50,000 env steps each in under 10 minutes.

Rows:
- `grid trainer (JAX env)`: `GridTrainer.train` with P policies (seeds = P, no grid, the default
  `PPOConfig`) over 1 + `--chunks` chunks: rollouts and updates in one jitted, policy-vmapped chunk.
  The first chunk compiles and is not timed (its time minus the median steady chunk is reported as
  compile time). The timed chunks include what a real run pays between chunks: metrics to the host,
  appending the learning curves, rewriting curves.parquet and writing a checkpoint (in a temp dir).
- `stepwise (Gymnasium env, same PPO)`: `train_stepwise`, one policy, over 1 + `--stepwise-chunks`
  chunks: a Python loop over `DERGymEnv.step` for the 16 envs plus the trainer's own jitted
  `learn`; the first chunk (env construction, compilation) is not timed.
- `stable-baselines3 PPO`: `PPO("MlpPolicy")` on `DummyVecEnv([DERGymEnv] x num_envs)` on CPU, with
  n_steps, batch size, epochs, learning rate, discount, GAE lambda, clip range (policy and value),
  entropy and value coefficients and gradient clipping matched to `PPOConfig` and the per-policy
  defaults; `--sb3-steps` env steps (or `--sb3-seconds`, whichever comes first) after a one-update
  warm-up, once per torch thread count in `--sb3-threads` (0: torch's default). Small MLPs on a
  loaded CPU run far faster on one torch thread, so the fastest SB3 row is the baseline.
  Remaining differences from our PPO (`dersim.trainer.network`): our actor and critic share the
  first layer (the embedding, t and optional last-action parts), and SB3 >= 1.8 has no shared
  layers, so `net_arch=dict(pi=[h, h], vf=[h, h])` gives the critic its own first layer (one extra
  obs_dim x h matmul per sample); SB3 initialises hidden layers orthogonally (gain sqrt 2) where
  flax uses lecun-normal; SB3's clipped value loss is MSE(returns, clipped values) where ours is
  0.5 * max(unclipped, clipped); Adam eps 1e-5 versus optax's 1e-8; SB3's action space is
  Discrete(N) where ours has N + 1 logits with STOP masked outside the learned terminator; SB3
  reads the full observation every step while we keep state ids and gather embeddings.

The 1024 x 50,000 wall time is projected from the 1024-policy row (compile + the chunks a
50,000-step run needs at the timed rate; from the largest measured P if 1024 is not measured);
`--full` also runs it, from `GridTrainer.from_grid` to the last checkpoint, compilation included.

Full-information trainers (`--part full-information`, also in the default `--part both`): fqi,
exact-pg and PPO, each with 1, 16, 256 and 1,024 policies (`--algo-policies`) trained from scratch
to the end at the CLI's defaults on the same cache, an alpha sweep (x 4 l2 strengths for fqi, x
seeds for the others). Per row: the wall time from the trainer's construction to a policy within 1%
of its final val return (median over the policies; compilation included, read at chunk ends),
policies per minute, and both as ratios against PPO with as many policies in the same run; for
exact-pg also the time to reach the final val return of the PPO policy with the same alpha and seed.
Targets: 1,024 fqi policies in under 60 s; exact-pg at least 10x faster than PPO to the same val
return.

    python benchmarks/train_throughput.py [--cache DIR] [--policies 1,16,256,1024] [--chunks 3]
        [--stepwise-chunks 2] [--sb3-steps 16384] [--sb3-seconds 30] [--sb3-threads 1,0] [--full]
        [--metric NAME] [--p0 X] [--embedding-dim K] [--hidden H]
        [--part ppo|full-information|both] [--algo-policies 1,16,256,1024]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import jax
import numpy as np
import polars as pl
import torch
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from dersim.env.reference import DERGymEnv
from dersim.env.tables import EnvSpec
from dersim.trainer import run as run_module
from dersim.trainer import stepwise as stepwise_module
from dersim.trainer.ppo import HYPER_DEFAULTS, PPOConfig
from dersim.trainer.run import GridTrainer

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 100
TARGET_POLICIES = 1024
TARGET_STEPS = 50_000
TARGET_SECONDS = 600.0


@dataclass
class Row:
    run: str
    policies: int
    steps: int
    seconds: float
    compile_s: float | None = None
    chunk_s: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


class ChunkClock(Progress):
    """A rich `Progress` that notes when each chunk ends: both trainers advance their bar once per
    chunk, after the chunk's curves (and, for the grid trainer, its checkpoint) are written."""

    ends: list[float] = []

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        if kwargs.get("advance"):
            ChunkClock.ends.append(time.perf_counter())
        super().update(task_id, **kwargs)


def clocked(
    train: Callable[[], Any], module: Any, n_policies: int, label: str, config: PPOConfig
) -> Row:
    """Run `train` (1 warm-up chunk + timed chunks) with `module.Progress` clocked; the first
    chunk's time minus the median steady chunk is the compile time."""
    ChunkClock.ends = []
    started = time.perf_counter()
    with mock.patch.object(module, "Progress", ChunkClock):
        train()
    ends = ChunkClock.ends
    chunk_s = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    timed = ends[-1] - ends[0]
    return Row(
        label,
        n_policies,
        n_policies * len(chunk_s) * config.steps_per_chunk,
        timed,
        max(0.0, ends[0] - started - statistics.median(chunk_s)),
        chunk_s,
    )


def default_cache(tmp: Path) -> tuple[Path, bool]:
    """(cache, built here): cache/strategyqa when it is built, else the synthetic recipe built into
    `tmp`."""
    real = REPO / "cache" / "strategyqa"
    if (real / "manifest.json").exists():
        return real, False
    from dersim.builder.build import build_cache
    from dersim.recipe import load_recipe

    out = tmp / "synthetic"
    build_cache(load_recipe(REPO / "builders" / "synthetic.toml"), out, show_progress=False)
    return out, True


def time_grid(
    cache: Path, spec: EnvSpec, config: PPOConfig, n_policies: int, chunks: int, tmp: Path
) -> Row:
    """`GridTrainer.train` over 1 + `chunks` chunks; the first compiles and is not timed."""
    out = tmp / f"grid-{n_policies}"
    trainer = GridTrainer.from_grid(
        cache,
        out,
        spec,
        config,
        {},
        seeds=n_policies,
        steps=(1 + chunks) * config.steps_per_chunk,
        algo="ppo",
    )
    row = clocked(
        lambda: trainer.train(show_progress=False),
        run_module,
        n_policies,
        "grid trainer (JAX env)",
        config,
    )
    shutil.rmtree(out, ignore_errors=True)
    return row


def time_stepwise(cache: Path, spec: EnvSpec, config: PPOConfig, chunks: int, tmp: Path) -> Row:
    """`train_stepwise` over 1 + `chunks` chunks; the first (env construction, compilation) is not
    timed."""
    out = tmp / "stepwise"
    trainer = GridTrainer.from_grid(
        cache,
        out,
        spec,
        config,
        {},
        seeds=1,
        steps=(1 + chunks) * config.steps_per_chunk,
        algo="ppo",
    )
    row = clocked(
        lambda: stepwise_module.train_stepwise(trainer, show_progress=False),
        stepwise_module,
        1,
        "stepwise (Gymnasium env, same PPO)",
        config,
    )
    shutil.rmtree(out, ignore_errors=True)
    return row


def time_sb3(
    cache: Path, spec: EnvSpec, config: PPOConfig, steps: int, seconds: float, threads: int
) -> Row:
    """stable-baselines3 PPO on DummyVecEnv x num_envs of the reference env, settings matched to
    `config`; `steps` env steps or `seconds`, whichever comes first, with `threads` torch
    threads."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Deadline(BaseCallback):
        def __init__(self, deadline: float) -> None:
            super().__init__()
            self.deadline = deadline

        def _on_step(self) -> bool:
            return time.perf_counter() < self.deadline

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        env = DummyVecEnv([lambda: DERGymEnv(cache, spec) for _ in range(config.num_envs)])
        model = PPO(
            "MlpPolicy",
            env,
            learning_rate=HYPER_DEFAULTS["lr"],
            n_steps=config.num_steps,
            batch_size=config.minibatch_size,
            n_epochs=config.update_epochs,
            gamma=HYPER_DEFAULTS["discount"],
            gae_lambda=HYPER_DEFAULTS["gae_lambda"],
            clip_range=HYPER_DEFAULTS["clip_eps"],
            clip_range_vf=HYPER_DEFAULTS["clip_eps"],
            ent_coef=HYPER_DEFAULTS["ent_coef"],
            vf_coef=HYPER_DEFAULTS["vf_coef"],
            max_grad_norm=config.max_grad_norm,
            policy_kwargs={
                "net_arch": {"pi": [config.hidden] * 2, "vf": [config.hidden] * 2},
                "activation_fn": torch.nn.Tanh,
            },
            device="cpu",
            seed=0,
            verbose=0,
        )
        model.set_logger(
            Logger(folder=None, output_formats=[])
        )  # the default writes a folder in the temp dir
        model.learn(total_timesteps=config.batch_size)  # warm-up: one rollout and one update
        before = model.num_timesteps
        started = time.perf_counter()
        model.learn(
            total_timesteps=steps, reset_num_timesteps=False, callback=Deadline(started + seconds)
        )
        elapsed = time.perf_counter() - started
        env.close()
    finally:
        torch.set_num_threads(previous)
    return Row(
        f"stable-baselines3 PPO ({threads} torch thread{'s' if threads > 1 else ''})",
        1,
        model.num_timesteps - before,
        elapsed,
    )


def full_run(cache: Path, spec: EnvSpec, config: PPOConfig, tmp: Path) -> float:
    """Wall seconds of a real 1024 x 50,000 run: trainer construction, compile, every chunk and
    checkpoint."""
    started = time.perf_counter()
    trainer = GridTrainer.from_grid(
        cache, tmp / "full", spec, config, {}, seeds=TARGET_POLICIES, steps=TARGET_STEPS, algo="ppo"
    )
    trainer.train(show_progress=False)
    seconds = time.perf_counter() - started
    shutil.rmtree(tmp / "full", ignore_errors=True)
    return seconds


FQI_TARGET_SECONDS = 60.0
PG_TARGET_RATIO = 10.0


@dataclass
class Convergence:
    algo: str
    policies: int
    seconds: float  # construction to the last checkpoint
    to_one_percent: (
        float  # median over policies: seconds until val return is within 1% of its final value
    )
    chunk_ends: list[float]
    val: np.ndarray  # [policies, chunks] val return after each chunk
    settings: list[dict]

    @property
    def per_minute(self) -> float:
        return 60 * self.policies / self.seconds

    def time_to_reach(self, policy: int, target: float) -> float:
        """Seconds until policy `policy`'s val return first reaches `target` (inf if never)."""
        reached = np.flatnonzero(self.val[policy] >= target - 1e-6)
        return self.chunk_ends[int(reached[0])] if len(reached) else float("inf")


def algo_grid(algo: str, n_policies: int) -> tuple[dict[str, list], int]:
    """(grid, seeds) with `n_policies` policies: alphas x 4 l2 strengths for fqi (no seed changes
    its closed form), alphas x seeds (up to 4) for the others."""
    l2 = [1.0] if algo != "fqi" or n_policies < 4 else list(np.geomspace(0.1, 10.0, 4))
    seeds = 1 if algo == "fqi" or n_policies < 256 else 4 if n_policies >= 1024 else 2
    n_alphas = max(1, n_policies // (len(l2) * seeds))
    alphas = [0.05] if n_alphas == 1 else [0.0, *np.geomspace(1e-3, 100.0, n_alphas - 1)]
    grid = {"alpha": [float(a) for a in alphas]}
    if algo == "fqi":
        grid["l2"] = [float(x) for x in l2]
    return grid, seeds


def converge(cache: Path, spec: EnvSpec, algo: str, n_policies: int, tmp: Path) -> Convergence:
    """Train `n_policies` policies of `algo` at the defaults, clocking every chunk end."""
    grid, seeds = algo_grid(algo, n_policies)
    out = tmp / f"{algo}-{n_policies}"
    ChunkClock.ends = []
    started = time.perf_counter()
    trainer = GridTrainer.from_grid(
        cache, out, spec, PPOConfig(), grid, seeds=seeds, steps=TARGET_STEPS, algo=algo
    )
    with mock.patch.object(run_module, "Progress", ChunkClock):
        _, curves = trainer.train(show_progress=False)
    seconds = time.perf_counter() - started
    ends = [end - started for end in ChunkClock.ends]
    val = np.stack(
        [
            curves.filter(pl.col("policy") == i).sort("run_chunk")["val_return"].to_numpy()
            for i in range(len(trainer.policies))
        ]
    )
    final = val[:, -1:]
    within = val >= final - 0.01 * np.abs(final) - 1e-6
    first = within.argmax(axis=1)
    shutil.rmtree(out, ignore_errors=True)
    return Convergence(
        algo,
        len(trainer.policies),
        seconds,
        float(np.median([ends[c] for c in first])),
        ends,
        val,
        trainer.policies,
    )


def full_information_part(
    cache: Path, spec: EnvSpec, counts: list[int], console: Console, tmp: Path
) -> None:
    for algo in (
        "ppo",
        "exact-pg",
        "fqi",
    ):  # warm-up: what every process pays once (imports, shared compiles)
        converge(cache, spec, algo, 1, tmp)
    rows: dict[tuple[str, int], Convergence] = {}
    for n_policies in counts:
        for algo in ("ppo", "exact-pg", "fqi"):
            rows[algo, n_policies] = row = converge(cache, spec, algo, n_policies, tmp)
            console.print(
                f"  {algo} x {row.policies}: {row.seconds:.1f} s, within 1% of the final val "
                f"return after {row.to_one_percent:.1f} s (median)"
            )
    table = Table(
        "algorithm",
        "policies",
        "seconds (all chunks)",
        "to within 1% of final val return (s)",
        "policies / min",
        "x PPO (time to 1%)",
        "x PPO (policies / min)",
        "x PPO to PPO's val return",
        title="full-information trainers against PPO (same cache, same run, construction included)",
    )
    for (algo, n_policies), row in rows.items():
        ppo = rows["ppo", n_policies]
        same_return = ""
        if algo == "exact-pg":  # policy i of both runs has the same alpha and seed
            targets = [ppo.val[i, -1] - 0.01 * abs(ppo.val[i, -1]) for i in range(row.policies)]
            ratios = [
                ppo.time_to_reach(i, target) / row.time_to_reach(i, target)
                for i, target in enumerate(targets)
            ]
            reached = np.mean([r > 0 for r in ratios])
            same_return = f"{np.median(ratios):.1f} (reached by {reached:.0%})"
        table.add_row(
            algo,
            f"{row.policies:,}",
            f"{row.seconds:.1f}",
            f"{row.to_one_percent:.1f}",
            f"{row.per_minute:,.0f}",
            f"{ppo.to_one_percent / row.to_one_percent:.1f}",
            f"{row.per_minute / ppo.per_minute:.1f}",
            same_return,
        )
    console.print(table)
    largest = rows.get(("fqi", TARGET_POLICIES))
    if largest is not None:
        verdict = "met" if largest.seconds < FQI_TARGET_SECONDS else "NOT met"
        console.print(
            f"{largest.policies:,} fqi policies: {largest.seconds:.1f} s (target < "
            f"{FQI_TARGET_SECONDS:.0f} s: {verdict})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default: cache/strategyqa if built, else builders/synthetic.toml "
        "built into a temp dir)",
    )
    parser.add_argument(
        "--policies", default="1,16,256,1024", help="policy counts of the grid trainer rows"
    )
    parser.add_argument(
        "--chunks", type=int, default=3, help="timed chunks per grid row (after a warm-up chunk)"
    )
    parser.add_argument(
        "--stepwise-chunks", type=int, default=2, help="timed chunks of the Gymnasium-env PPO"
    )
    parser.add_argument(
        "--sb3-steps", type=int, default=16_384, help="timed env steps of stable-baselines3"
    )
    parser.add_argument(
        "--sb3-seconds", type=float, default=30.0, help="at most this long per SB3 row"
    )
    parser.add_argument(
        "--sb3-threads",
        default="1,0",
        help=(
            "torch thread counts to time SB3 with (0: torch's default); the fastest is the baseline"
        ),
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"also run {TARGET_POLICIES} policies x {TARGET_STEPS:,} env steps end to end",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="score P (default: the cache's; accuracy on the synthetic cache built here)",
    )
    parser.add_argument(
        "--p0",
        type=float,
        default=None,
        help=f"threshold (default: {EnvSpec.p0}; 0.5 on the synthetic cache built here)",
    )
    parser.add_argument(
        "--embedding-dim",
        type=int,
        default=None,
        help="observe the top K principal components of the embeddings (every row, SB3 included)",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=PPOConfig.hidden,
        help="MLP width of every row, SB3 included (default: the trainer's)",
    )
    parser.add_argument(
        "--part",
        choices=("ppo", "full-information", "both"),
        default="both",
        help="ppo: PPO's env-steps/s against SB3 and the Gymnasium path; full-information: fqi and "
        "exact-pg against PPO to a trained policy",
    )
    parser.add_argument(
        "--algo-policies",
        default="1,16,256,1024",
        help="policy counts of the full-information rows (each algorithm, PPO included)",
    )
    args = parser.parse_args()
    if args.part == "full-information":
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            cache, built = (args.cache, False) if args.cache else default_cache(tmp)
            spec = EnvSpec(
                metric=args.metric or ("accuracy" if built else None),
                p0=args.p0 if args.p0 is not None else (0.5 if built else EnvSpec.p0),
            )
            console = Console(width=180)
            console.print(
                f"cache {cache}; {os.cpu_count()} CPUs, "
                f"{platform.processor() or platform.machine()}; load average "
                f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
            )
            full_information_part(
                cache, spec, [int(n) for n in args.algo_policies.split(",")], console, tmp
            )
        return
    policy_counts = [int(p) for p in args.policies.split(",")]
    if min(args.chunks, args.stepwise_chunks, *policy_counts) < 1:
        parser.error("--policies, --chunks and --stepwise-chunks must be at least 1")
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        parser.error("needs stable-baselines3: pip install -c constraints.txt -e '.[bench]'")
    config = PPOConfig(hidden=args.hidden)
    default_threads = torch.get_num_threads()
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 180))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache, built = (args.cache, False) if args.cache else default_cache(tmp)
        metric = args.metric or ("accuracy" if built else None)
        p0 = args.p0 if args.p0 is not None else (0.5 if built else EnvSpec.p0)
        spec = EnvSpec(metric=metric, p0=p0, embedding_dim=args.embedding_dim)
        probe = GridTrainer.from_grid(
            cache, tmp / "probe", spec, config, {}, seeds=1, steps=1, algo="ppo"
        )
        tables = probe.tables
        console.print(
            f"cache {cache}: {tables.next_state.shape[0]} states, {tables.next_state.shape[1]} "
            f"experts, {len(tables.roots)} train questions, observed embedding dim "
            f"{tables.embedding.shape[1]}; metric {tables.metric}, p0 {p0}, terminator "
            f"{probe.spec.terminator}, T_max {probe.spec.t_max}"
        )
        console.print(
            f"PPO: {config.num_envs} envs x {config.num_steps} steps per update, "
            f"{config.update_epochs} epochs x {config.num_minibatches} minibatches, hidden "
            f"{config.hidden}, {config.updates_per_chunk} updates per chunk = "
            f"{config.steps_per_chunk:,} env steps per policy per chunk"
        )
        console.print(
            f"jax {jax.__version__} on {jax.devices()[0].platform} "
            f"({jax.devices()[0].device_kind}); {os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}; load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )

        sb3_rows = [
            time_sb3(
                cache, spec, config, args.sb3_steps, args.sb3_seconds, int(n) or default_threads
            )
            for n in args.sb3_threads.split(",")
        ]
        sb3 = max(sb3_rows, key=lambda r: r.rate)
        stepwise = time_stepwise(cache, spec, config, args.stepwise_chunks, tmp)
        grid = []
        for n_policies in policy_counts:
            grid.append(time_grid(cache, spec, config, n_policies, args.chunks, tmp))
            console.print(
                f"  {n_policies} policies: {grid[-1].rate:,.0f} env-steps/s "
                f"(compile {grid[-1].compile_s:.1f} s)"
            )
        full_seconds = full_run(cache, spec, config, tmp) if args.full else None
        load_after = os.getloadavg()
        if args.part == "both":
            full_information_part(
                cache, spec, [int(n) for n in args.algo_policies.split(",")], console, tmp
            )

    table = Table(
        "run",
        "policies",
        "env steps timed",
        "seconds",
        "aggregate env-steps/s",
        "per policy",
        "s per chunk (min-max)",
        "compile s",
        "x SB3",
        title="whole-PPO training throughput (rollout + update)",
    )
    for row in [*sb3_rows, stepwise, *grid]:
        spread = f"{min(row.chunk_s):.2f}-{max(row.chunk_s):.2f}" if row.chunk_s else ""
        table.add_row(
            row.run,
            f"{row.policies:,}",
            f"{row.steps:,}",
            f"{row.seconds:.2f}",
            f"{row.rate:,.0f}",
            f"{row.rate / row.policies:,.0f}",
            spread,
            "" if row.compile_s is None else f"{row.compile_s:.1f}",
            f"{row.rate / sb3.rate:,.1f}",
        )
    console.print(table)
    console.print(f"load average after: {', '.join(f'{x:.1f}' for x in load_after)}")

    best = max(grid, key=lambda r: r.rate)
    ratio = best.rate / sb3.rate
    console.print(
        f"best aggregate: {best.rate:,.0f} env-steps/s at {best.policies:,} policies = "
        f"{ratio:,.1f}x the fastest stable-baselines3 row (target >= {TARGET_RATIO}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})"
    )
    basis = next(
        (r for r in grid if r.policies == TARGET_POLICIES), max(grid, key=lambda r: r.policies)
    )
    n_chunks = math.ceil(TARGET_STEPS / config.steps_per_chunk)
    projected = basis.compile_s + TARGET_POLICIES * n_chunks * config.steps_per_chunk / basis.rate
    verdict = "met" if projected < TARGET_SECONDS else "NOT met"
    console.print(
        f"{TARGET_POLICIES} policies x {TARGET_STEPS:,} env steps ({n_chunks} chunks = "
        f"{n_chunks * config.steps_per_chunk:,} steps each): projected {projected:,.0f} s from the "
        f"{basis.policies:,}-policy row (compile {basis.compile_s:.1f} s + chunks at "
        f"{basis.rate:,.0f} env-steps/s; target < {TARGET_SECONDS:.0f} s: {verdict})"
    )
    if full_seconds is not None:
        console.print(
            f"{TARGET_POLICIES} policies x {TARGET_STEPS:,} env steps measured: "
            f"{full_seconds:,.0f} s end to end (target < {TARGET_SECONDS:.0f} s: "
            f"{'met' if full_seconds < TARGET_SECONDS else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
