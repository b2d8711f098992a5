"""`dersim train --vectorized`: a grid of PPO policies trained together on a cache, in jitted chunks.

Policies learn on the run's train questions only. After each chunk (in Python) the driver runs
every policy greedily on the held-out val questions (one jitted call for the whole grid), keeps
each policy's best parameters by val return when `keep == "best"`, updates the progress bar,
appends learning curves (train return beside val score) and writes a checkpoint, so a run can be
resumed after its last finished chunk. On several devices the policy axis is sharded across them;
the cache tables are replicated.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dersim.env.der_env import POLICY_SETTINGS, make_params
from dersim.env.judge import JUDGE_FILE
from dersim.env.tables import EnvSpec, load_tables, reads_reference, split_roots
from dersim.errors import DersimError
from dersim.trainer.checkpoint import load_checkpoint, save_checkpoint
from dersim.trainer.greedy import make_greedy
from dersim.trainer.grid import expand_policies, policy_axes, stack_env_params, stack_hyper
from dersim.trainer.ppo import HYPER_DEFAULTS, PPOConfig, Runner, init_runner, make_network, make_ppo

RUN_FILE = "run.json"
CURVES = "curves.parquet"
KEEP = ("best", "last")


@struct.dataclass
class Best:
    """Per policy: the parameters with the best greedy val return so far, that return and its chunk."""

    params: dict
    val_return: jax.Array  # float32 [P], -inf before the first evaluation
    chunk: jax.Array  # int32 [P], -1 before the first evaluation


def choose_policy(policies: list[dict[str, Any]], score: np.ndarray, cost: np.ndarray,
                  spec: EnvSpec | None = None) -> int | None:
    """The deployable policy with the best score, the lower cost breaking ties, then the lower index;
    None when every policy reads the reference (the oracle terminator, or under `spec` pairs picked
    by the reference). Callers pass val figures (or train ones when a run has no val split), never
    the evaluation split's."""
    deployable = [i for i, p in enumerate(policies)
                  if not reads_reference(spec or EnvSpec(), p["terminator"])]
    return min(deployable, key=lambda i: (-float(score[i]), float(cost[i]), i), default=None)


def base_settings(spec: EnvSpec) -> dict[str, Any]:
    """Per-policy defaults: PPO's and the environment spec's."""
    return {**HYPER_DEFAULTS, **{k: getattr(spec, k) for k in POLICY_SETTINGS}}


class GridTrainer:
    """Holds the stacked policies, the compiled chunk and val functions and the run directory."""

    @classmethod
    def from_grid(cls, cache: Path, out: Path, spec: EnvSpec, config: PPOConfig, grid: dict[str, list[Any]],
                  seeds: int, steps: int, keep: str = "best", verify: bool = True) -> GridTrainer:
        """Seeds x every grid combination; unset per-policy values come from `spec` and PPO defaults."""
        return cls(cache, out, spec, config, expand_policies(grid, seeds, base_settings(spec)), steps, keep, verify)

    @classmethod
    def from_run(cls, run_dir: Path, cache: Path | None = None, verify: bool = True) -> GridTrainer:
        """The trainer of a finished or interrupted run, rebuilt from its run.json."""
        path = run_dir / RUN_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            settings = (Path(record["cache"]), EnvSpec(**record["env"]), PPOConfig(**record["ppo"]),
                        record["policies"], record["steps_per_policy"], record.get("keep", "last"))
        except FileNotFoundError:
            raise DersimError(f"{path}: not a training run directory") from None
        except json.JSONDecodeError as exc:
            raise DersimError(f"{path}: not valid JSON ({exc})") from None
        except (KeyError, TypeError) as exc:
            raise DersimError(f"{path}: not a run record of this dersim version ({exc})") from None
        run_cache, spec, config, policies, steps, keep = settings
        trainer = cls(cache or run_cache, run_dir, spec, config, policies, steps, keep, verify)
        trainer.run_cache = run_cache
        return trainer

    def __init__(self, cache: Path, out: Path, spec: EnvSpec, config: PPOConfig, policies: list[dict[str, Any]],
                 steps: int, keep: str = "best", verify: bool = True) -> None:
        if keep not in KEEP:
            raise DersimError(f"--keep '{keep}': expected one of {', '.join(KEEP)}")
        if keep == "best" and spec.val_fraction <= 0:
            raise DersimError("--keep best chooses checkpoints on the val split: it needs --val-fraction > 0 "
                              "(or use --keep last)")
        t_max_values = [p["t_max"] for p in policies if p.get("t_max") is not None]
        judged = [p for p in policies if p["terminator"] == "judge"]
        if any(p["p0"] != spec.p0 for p in judged):
            raise DersimError("the judge terminator is fitted at one p0 (--p0): do not vary p0 with --grid for judge "
                              "policies")
        depth_spec = replace(spec, t_max=max(t_max_values) if t_max_values else spec.t_max)
        self.tables = load_tables(cache, depth_spec, with_judge=True if judged else None, verify=verify)
        spec = replace(spec, metric=self.tables.metric, t_max=spec.t_max or self.tables.max_depth)
        self.cache, self.out, self.spec, self.config, self.keep = cache, out, spec, config, keep
        self.run_cache = cache  # the cache the run trained on (from_run: as recorded, whatever `cache` is)
        self.policies = [{**p, "t_max": spec.t_max if p.get("t_max") is None else p["t_max"]} for p in policies]
        if any(p["t_max"] < 1 for p in self.policies):
            raise DersimError("--grid t_max values must be at least 1")
        self.steps = steps
        self.n_chunks = max(1, math.ceil(steps / config.steps_per_chunk))
        base = make_params(self.tables)
        self.env_params = stack_env_params(base, self.policies)
        self.hyper = stack_hyper(self.policies)
        self.axes = policy_axes(self.env_params)
        self.network = make_network(config, base)
        self.sharding = self._policy_sharding(len(self.policies))
        self.val_roots = split_roots(self.tables, cache, "val")[0] if spec.val_fraction > 0 else None
        self.greedy = make_greedy(self.network, self.axes)
        chunk = make_ppo(config, self.network, self.tables.next_state.shape[0]).train_chunk
        self._chunk = jax.jit(jax.vmap(chunk, in_axes=(0, self.axes, 0)), donate_argnums=0)
        self._init = jax.jit(jax.vmap(lambda k, e, h: init_runner(k, config, e, h), in_axes=(0, self.axes, 0)))

    @staticmethod
    def _policy_sharding(n_policies: int) -> NamedSharding | None:
        devices = jax.devices()
        if len(devices) < 2 or n_policies % len(devices):
            return None
        return NamedSharding(Mesh(np.array(devices), ("policies",)), P("policies"))

    def _shard(self, tree: Any, per_policy: Any = None) -> Any:
        """Place leaves with a leading policy axis on the mesh; replicate the rest."""
        if self.sharding is None:
            return tree
        replicated = NamedSharding(self.sharding.mesh, P())
        axes = per_policy if per_policy is not None else jax.tree.map(lambda _: 0, tree)
        return jax.tree.map(lambda x, a: jax.device_put(x, self.sharding if a == 0 else replicated), tree, axes,
                            is_leaf=lambda x: x is None)

    def init(self) -> Runner:
        # Policies that share a seed share their initial weights and env draws: grid points compare fairly.
        keys = jax.vmap(jax.random.PRNGKey)(np.asarray([p["seed"] for p in self.policies], dtype=np.uint32))
        runner = self._init(keys, self.env_params, self.hyper)
        return self._shard(runner)

    def initial_state(self) -> dict[str, Any]:
        """What a checkpoint holds, before training: the runner, chunks done and the best-by-val record."""
        runner = self.init()
        n = len(self.policies)
        best = Best(params=jax.tree.map(jnp.copy, runner.params), val_return=jnp.full(n, -jnp.inf, jnp.float32),
                    chunk=jnp.full(n, -1, jnp.int32))
        return {"runner": runner, "chunk": 0, "best": best}

    def run_record(self) -> dict[str, Any]:
        return {"cache": str(self.cache), "env": asdict(self.spec), "ppo": asdict(self.config),
                "policies": self.policies, "steps_per_policy": self.steps, "n_chunks": self.n_chunks,
                "keep": self.keep, "cost_scale": self.tables.cost_scale}

    def load(self) -> dict[str, Any]:
        """The run directory's last checkpoint (runner, chunk, best)."""
        state = load_checkpoint(self.out, self.initial_state())
        return {**state, "runner": self._shard(state["runner"])}

    def kept_params(self, state: dict[str, Any]) -> dict:
        """The parameters to evaluate and deploy: each policy's best by val return, or its last."""
        if self.keep == "last":
            return state["runner"].params
        best: Best = state["best"]
        evaluated = np.asarray(best.chunk) >= 0
        return jax.tree.map(lambda b, last: jnp.where(evaluated.reshape((-1,) + (1,) * (b.ndim - 1)), b, last),
                            best.params, state["runner"].params)

    def _resume(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The last checkpoint and the curves up to it; the run must be the same (settings compared
        through their JSON form)."""
        path = self.out / RUN_FILE
        if not path.exists():
            raise DersimError(f"{self.out}: nothing to resume (no {RUN_FILE}); train without --resume")
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if recorded != json.loads(json.dumps(self.run_record())):
            raise DersimError(f"{path}: --resume needs the same cache, grid, seeds, steps and settings as the run "
                              "being resumed")
        state = self.load()
        chunk = int(state["chunk"])
        curves = pl.read_parquet(self.out / CURVES).filter(pl.col("chunk") < chunk).to_dicts() \
            if (self.out / CURVES).exists() else []
        return state, curves

    def validate(self, params: dict) -> dict[str, np.ndarray] | None:
        """Per policy: greedy mean return, score, cost and calls on the val questions (None without val)."""
        if self.val_roots is None:
            return None
        result = self.greedy(params, self.env_params, self.val_roots)
        return {"val_return": result["return"].mean(axis=1),
                "val_score": self.tables.score[result["final_state"]].mean(axis=1),
                "val_cost": result["env_cost"].mean(axis=1), "val_calls": result["calls"].mean(axis=1)}

    def best_on_val(self, state: dict[str, Any]) -> dict[str, float] | None:
        """The chosen policy and its val figures (kept parameters), or None without val or deployable policies."""
        val = self.validate(self.kept_params(state))
        if val is None:
            return None
        chosen = choose_policy(self.policies, val["val_score"], val["val_cost"], self.spec)
        return None if chosen is None else {"policy": chosen, **{k: float(v[chosen]) for k, v in val.items()}}

    def keep_best(self, best: Best, params: dict, val_return: np.ndarray, chunk: int) -> Best:
        improved = val_return > np.asarray(best.val_return)
        params = jax.tree.map(lambda b, p: jnp.where(improved.reshape((-1,) + (1,) * (b.ndim - 1)), p, b),
                              best.params, params)
        return Best(params=params, val_return=jnp.where(improved, val_return, best.val_return),
                    chunk=jnp.where(improved, chunk, best.chunk))

    def train(self, resume: bool = False, show_progress: bool = True,
              stop_after: int | None = None) -> tuple[dict[str, Any], pl.DataFrame]:
        """Run all chunks (or the remaining ones; at most `stop_after` now), checkpointing after each;
        returns the final checkpoint state (runner, chunk, best) and the learning curves (one row per
        policy per chunk)."""
        self.out.mkdir(parents=True, exist_ok=True)
        state, curves = self._resume() if resume else (self.initial_state(), [])
        if self.tables.judge is not None:
            self.tables.judge.save(self.out / JUDGE_FILE)
        (self.out / RUN_FILE).write_text(json.dumps(self.run_record(), indent=2), encoding="utf-8")
        env_params, hyper = self._shard(self.env_params, self.axes), self._shard(self.hyper)
        runner, best, first_chunk = state["runner"], state["best"], int(state["chunk"])
        n_policies = len(self.policies)
        with Progress(TextColumn("[bold]training {task.fields[policies]} policies"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TextColumn("return {task.fields[ret]}"),
                      TextColumn("{task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      disable=not show_progress) as progress:
            task = progress.add_task("train", total=self.n_chunks, completed=first_chunk, policies=n_policies,
                                     rate="", ret="", val="")
            last_chunk = self.n_chunks if stop_after is None else min(self.n_chunks, first_chunk + stop_after)
            for index in range(first_chunk, last_chunk):
                started = time.perf_counter()
                runner, metrics = self._chunk(runner, env_params, hyper)
                metrics = jax.tree.map(np.asarray, metrics)  # [P, updates]
                seconds = time.perf_counter() - started
                val = self.validate(runner.params)
                if val is not None and self.keep == "best":
                    best = self.keep_best(best, runner.params, val["val_return"], index)
                curves.extend(_curve_rows(metrics, val, index, (index + 1) * self.config.steps_per_chunk))
                pl.DataFrame(curves).write_parquet(self.out / CURVES)
                save_checkpoint(self.out, {"runner": runner, "chunk": index + 1, "best": best})
                rate = n_policies * self.config.steps_per_chunk / seconds
                progress.update(task, advance=1, rate=f"{rate / 1e3:,.0f}k env-steps/s",
                                ret=f"{float(np.mean(metrics['return'][:, -1])):.3f}",
                                val="" if val is None else f"val score {float(np.max(val['val_score'])):.3f}")
        self.finished = last_chunk == self.n_chunks
        return {"runner": runner, "chunk": last_chunk, "best": best}, pl.DataFrame(curves)


def _curve_rows(metrics: dict[str, np.ndarray], val: dict[str, np.ndarray] | None, chunk: int,
                steps: int) -> list[dict[str, Any]]:
    """Per policy: the chunk's episode-weighted means of the update metrics, and its greedy val figures."""
    episodes = metrics["episodes"].astype(np.float64)
    weight = np.maximum(episodes.sum(axis=1), 1)
    rows = []
    for policy in range(episodes.shape[0]):
        row = {"policy": policy, "chunk": chunk, "env_steps": steps, "episodes": int(episodes[policy].sum()),
               "loss": float(metrics["loss"][policy].mean()),
               "skipped_updates": int(metrics["skipped_updates"][policy].sum())}
        for key in ("return", "final_score", "cost", "calls", "success"):
            row[key] = float((metrics[key][policy] * episodes[policy]).sum() / weight[policy])
        for key in ("val_return", "val_score", "val_cost", "val_calls"):
            row[key] = float("nan") if val is None else float(val[key][policy])
        rows.append(row)
    return rows
