"""Environment throughput: JAX env steps/s at 1, 64, 1024 and 16384 parallel envs, against the plain
Gymnasium reference env on the same cache.

Targets on a 2-core CPU: >= 10M JAX env steps/s at the best batch size, and >= 300x the Gymnasium
reference env.

Rows:
- `jax, ids only`: one jitted `lax.scan` over steps of a vmapped `step` (random actions drawn in
  the scan, auto-reset inside `step`, a per-env reset key per step); the observation that `step`
  returns is not used, so XLA drops it: the cost of a trainer that keeps trajectories as state ids
  and gathers embeddings in the loss.
- `jax, obs reduced`: the same, but the full observation vector of every env is materialised and
  summed each step: the cost of the observation a policy reads at every step (minus the policy).
- `gymnasium reference`: `DERGymEnv` in a plain Python loop, random actions, reset on termination.
- `jax, ids only, shared reset key` (diagnostic, largest batch): one reset key per step shared by
  all envs (`step` vmapped with the key unbatched), so envs that end on the same step restart on
  the same question. Not a fair trainer setting; it shows what the per-env reset keys (one
  threefry split plus one threefry draw per env and step) cost.
The cache tables are arguments of the jitted function, never closed-over constants. Both envs use
the default `EnvSpec` (oracle terminator, so actions are the N experts).

    python benchmarks/env_throughput.py [--cache DIR] [--seconds 1.0] [--batches 1,64,1024,16384]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from dersim.env.der_env import EnvParams, make_params, reset, step
from dersim.env.reference import DERGymEnv
from dersim.env.tables import EnvSpec, load_tables

REPO = Path(__file__).resolve().parents[1]
TARGET_STEPS_PER_S = 10e6
TARGET_RATIO = 300


def default_cache(tmp: Path) -> Path:
    """cache/strategyqa when it is built, else the synthetic recipe built into `tmp` (seconds)."""
    real = REPO / "cache" / "strategyqa"
    if (real / "manifest.json").exists():
        return real
    from dersim.builder.build import build_cache
    from dersim.recipe import load_recipe

    out = tmp / "synthetic"
    build_cache(load_recipe(REPO / "builders" / "synthetic.toml"), out, show_progress=False)
    return out


def make_rollout(
    n_envs: int, n_steps: int, n_actions: int, with_obs: bool, shared_key: bool = False
):
    """jit(rollout(params, states, key) -> (states, checksum)): `n_steps` steps of `n_envs` envs."""
    batched_step = jax.vmap(step, in_axes=(None if shared_key else 0, 0, 0, None))

    def rollout(params: EnvParams, states, key: jax.Array):
        def one_step(carry, step_key):
            states, total = carry
            action_key, reset_key = jax.random.split(step_key)
            actions = jax.random.randint(action_key, (n_envs,), 0, n_actions, dtype=jnp.int32)
            reset_keys = reset_key if shared_key else jax.random.split(reset_key, n_envs)
            obs, states, reward, done, _ = batched_step(reset_keys, states, actions, params)
            total = total + reward.sum() + (obs.sum() if with_obs else 0.0)
            return (states, total), None

        (states, total), _ = jax.lax.scan(
            one_step, (states, jnp.float32(0)), jax.random.split(key, n_steps)
        )
        return states, total

    return jax.jit(rollout)


def time_jax(
    params: EnvParams, n_envs: int, with_obs: bool, seconds: float, shared_key: bool = False
) -> tuple[int, float]:
    """(steps, seconds) of at least `seconds` of timed rollouts, after a warm-up call."""
    n_steps = max(16, min(20_000, (1 << 20) // n_envs))
    rollout = make_rollout(n_envs, n_steps, params.n_experts, with_obs, shared_key)
    _, states = jax.vmap(reset, in_axes=(0, None))(
        jax.random.split(jax.random.key(0), n_envs), params
    )
    key = jax.random.key(1)
    states, total = rollout(params, states, key)  # compile and warm up
    jax.block_until_ready((states, total))
    calls, started = 0, time.perf_counter()
    while True:
        key, sub = jax.random.split(key)
        states, total = rollout(params, states, sub)
        calls += 1
        if calls % 4 == 0 or calls == 1:
            jax.block_until_ready((states, total))
            if time.perf_counter() - started >= seconds:
                break
    jax.block_until_ready((states, total))
    return calls * n_steps * n_envs, time.perf_counter() - started


def time_gym(cache: Path, seconds: float) -> tuple[int, float]:
    """(steps, seconds) of the reference env: random actions, reset on termination."""
    env = DERGymEnv(cache, EnvSpec())
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    n_actions = int(env.action_space.n)
    steps, started = 0, time.perf_counter()
    while True:
        for action in rng.integers(n_actions, size=1000).tolist():
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        steps += 1000
        if time.perf_counter() - started >= seconds:
            return steps, time.perf_counter() - started


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
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per row")
    parser.add_argument("--batches", default="1,64,1024,16384", help="parallel env counts")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or default_cache(Path(tmp))
        tables = load_tables(cache, EnvSpec())
        params = make_params(tables)
        console.print(
            f"cache {cache}: {tables.next_state.shape[0]} states, {tables.next_state.shape[1]} "
            f"experts, {len(tables.roots)} train questions, embedding dim "
            f"{tables.embedding.shape[1]}, obs dim {params.obs_dim}; metric {tables.metric}, "
            f"terminator {tables.spec.terminator}, T_max {tables.spec.t_max}"
        )
        console.print(
            f"jax {jax.__version__} on {jax.devices()[0].platform} "
            f"({jax.devices()[0].device_kind}); {os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}; load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )

        gym_steps, gym_seconds = time_gym(cache, args.seconds)
        gym_rate = gym_steps / gym_seconds
        results = []
        for with_obs in (False, True):
            for n_envs in batches:
                steps, seconds = time_jax(params, n_envs, with_obs, args.seconds)
                results.append((with_obs, n_envs, steps, seconds, steps / seconds))
        diag_steps, diag_seconds = time_jax(
            params, batches[-1], False, args.seconds, shared_key=True
        )

    table = Table("env", "parallel envs", "steps timed", "seconds", "steps/s", "x gymnasium")
    table.add_row(
        "gymnasium reference (python loop)",
        "1",
        f"{gym_steps:,}",
        f"{gym_seconds:.2f}",
        f"{gym_rate:,.0f}",
        "1.0",
    )
    for with_obs, n_envs, steps, seconds, rate in results:
        label = "jax, obs reduced (sum) each step" if with_obs else "jax, ids only (obs unused)"
        table.add_row(
            label,
            f"{n_envs:,}",
            f"{steps:,}",
            f"{seconds:.2f}",
            f"{rate:,.0f}",
            f"{rate / gym_rate:,.0f}",
        )
    diag_rate = diag_steps / diag_seconds
    table.add_row(
        "jax, ids only, shared reset key (diagnostic)",
        f"{batches[-1]:,}",
        f"{diag_steps:,}",
        f"{diag_seconds:.2f}",
        f"{diag_rate:,.0f}",
        f"{diag_rate / gym_rate:,.0f}",
    )
    console.print(table)
    for with_obs in (False, True):
        rows = [r for r in results if r[0] == with_obs]
        best = max(rows, key=lambda r: r[4])
        label = "obs reduced" if with_obs else "ids only"
        console.print(
            f"best {label}: {best[4]:,.0f} steps/s at {best[1]:,} envs = "
            f"{best[4] / gym_rate:,.0f}x the gymnasium env (targets: >= {TARGET_STEPS_PER_S:,.0f} "
            f"steps/s {'met' if best[4] >= TARGET_STEPS_PER_S else 'NOT met'}, >= {TARGET_RATIO}x "
            f"{'met' if best[4] / gym_rate >= TARGET_RATIO else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
