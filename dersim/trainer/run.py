"""`dersim train --vectorized`: a grid of PPO policies trained together on a cache, in jitted chunks.

Between chunks (in Python) the driver updates the progress bar, appends learning curves and
writes a checkpoint, so a run can be resumed after its last finished chunk. On several devices
the policy axis is sharded across them; the cache tables are replicated.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jax
import numpy as np
import polars as pl
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dersim.env.der_env import make_params
from dersim.env.tables import EnvSpec, load_tables
from dersim.errors import DersimError
from dersim.trainer.checkpoint import load_checkpoint, save_checkpoint
from dersim.trainer.grid import expand_policies, policy_axes, stack_env_params, stack_hyper
from dersim.trainer.ppo import HYPER_DEFAULTS, PPOConfig, Runner, init_runner, make_network, make_ppo

RUN_FILE = "run.json"
CURVES = "curves.parquet"


def base_settings(spec: EnvSpec) -> dict[str, Any]:
    """Per-policy defaults: PPO's and the environment spec's."""
    return {**HYPER_DEFAULTS, "alpha": spec.alpha, "beta": spec.beta, "gamma": spec.gamma, "p0": spec.p0,
            "t_max": spec.t_max, "terminator": spec.terminator}


class GridTrainer:
    """Holds the stacked policies, the compiled chunk function and the run directory."""

    @classmethod
    def from_grid(cls, cache: Path, out: Path, spec: EnvSpec, config: PPOConfig, grid: dict[str, list[Any]],
                  seeds: int, steps: int) -> GridTrainer:
        """Seeds x every grid combination; unset per-policy values come from `spec` and PPO defaults."""
        return cls(cache, out, spec, config, expand_policies(grid, seeds, base_settings(spec)), steps)

    @classmethod
    def from_run(cls, run_dir: Path, cache: Path | None = None) -> GridTrainer:
        """The trainer of a finished or interrupted run, rebuilt from its run.json."""
        path = run_dir / RUN_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DersimError(f"{path}: not a training run directory") from None
        except json.JSONDecodeError as exc:
            raise DersimError(f"{path}: not valid JSON ({exc})") from None
        return cls(cache or Path(record["cache"]), run_dir, EnvSpec(**record["env"]), PPOConfig(**record["ppo"]),
                   record["policies"], record["steps_per_policy"])

    def __init__(self, cache: Path, out: Path, spec: EnvSpec, config: PPOConfig, policies: list[dict[str, Any]],
                 steps: int) -> None:
        t_max_values = [p["t_max"] for p in policies if p.get("t_max") is not None]
        depth_spec = EnvSpec(**{**spec.__dict__, "t_max": max(t_max_values) if t_max_values else spec.t_max})
        self.tables = load_tables(cache, depth_spec)
        spec = EnvSpec(**{**spec.__dict__, "metric": self.tables.metric,
                          "t_max": spec.t_max or self.tables.max_depth})
        self.cache, self.out, self.spec, self.config = cache, out, spec, config
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

    def run_record(self) -> dict[str, Any]:
        return {"cache": str(self.cache), "env": asdict(self.spec), "ppo": asdict(self.config),
                "policies": self.policies, "steps_per_policy": self.steps, "n_chunks": self.n_chunks}

    def _resume(self, template: Runner) -> tuple[Runner, int, list[dict[str, Any]]]:
        """The last checkpoint's runner, its chunk count and the curves up to it; the run must be the
        same (settings compared through their JSON form)."""
        path = self.out / RUN_FILE
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        if recorded != json.loads(json.dumps(self.run_record())):
            raise DersimError(f"{path}: --resume needs the same cache, grid, seeds, steps and settings as the run "
                              "being resumed")
        state = load_checkpoint(self.out, {"runner": template, "chunk": 0})
        chunk = int(state["chunk"])
        curves = pl.read_parquet(self.out / CURVES).filter(pl.col("chunk") < chunk).to_dicts() \
            if (self.out / CURVES).exists() else []
        return self._shard(state["runner"]), chunk, curves

    def train(self, resume: bool = False, show_progress: bool = True,
              stop_after: int | None = None) -> tuple[Runner, pl.DataFrame]:
        """Run all chunks (or the remaining ones; at most `stop_after` now), checkpointing after each;
        returns the runner and the learning curves (one row per policy per chunk)."""
        self.out.mkdir(parents=True, exist_ok=True)
        runner = self.init()
        curves: list[dict[str, Any]] = []
        first_chunk = 0
        if resume:
            runner, first_chunk, curves = self._resume(runner)
        (self.out / RUN_FILE).write_text(json.dumps(self.run_record(), indent=2), encoding="utf-8")
        env_params, hyper = self._shard(self.env_params, self.axes), self._shard(self.hyper)
        n_policies = len(self.policies)
        with Progress(TextColumn("[bold]training {task.fields[policies]} policies"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TextColumn("return {task.fields[ret]}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), disable=not show_progress) as progress:
            task = progress.add_task("train", total=self.n_chunks, completed=first_chunk, policies=n_policies,
                                     rate="", ret="")
            last_chunk = self.n_chunks if stop_after is None else min(self.n_chunks, first_chunk + stop_after)
            for index in range(first_chunk, last_chunk):
                started = time.perf_counter()
                runner, metrics = self._chunk(runner, env_params, hyper)
                metrics = jax.tree.map(np.asarray, metrics)  # [P, updates]
                seconds = time.perf_counter() - started
                curves.extend(_curve_rows(metrics, index, (index + 1) * self.config.steps_per_chunk))
                pl.DataFrame(curves).write_parquet(self.out / CURVES)
                save_checkpoint(self.out, {"runner": runner, "chunk": index + 1})
                rate = n_policies * self.config.steps_per_chunk / seconds
                progress.update(task, advance=1, rate=f"{rate / 1e3:,.0f}k env-steps/s",
                                ret=f"{float(np.mean(metrics['return'][:, -1])):.3f}")
        self.finished = last_chunk == self.n_chunks
        return runner, pl.DataFrame(curves)


def _curve_rows(metrics: dict[str, np.ndarray], chunk: int, steps: int) -> list[dict[str, Any]]:
    """Per policy: the chunk's episode-weighted means of the update metrics."""
    episodes = metrics["episodes"].astype(np.float64)
    weight = np.maximum(episodes.sum(axis=1), 1)
    rows = []
    for policy in range(episodes.shape[0]):
        row = {"policy": policy, "chunk": chunk, "env_steps": steps, "episodes": int(episodes[policy].sum()),
               "loss": float(metrics["loss"][policy].mean()),
               "skipped_updates": int(metrics["skipped_updates"][policy].sum())}
        for key in ("return", "final_score", "cost", "calls", "success"):
            row[key] = float((metrics[key][policy] * episodes[policy]).sum() / weight[policy])
        rows.append(row)
    return rows

