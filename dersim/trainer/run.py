"""`dersim train --vectorized`: a grid of policies trained on a cache, in jitted chunks.

The grid may mix algorithms (`dersim.trainer.algorithms`): each algorithm's policies train as one
group, one jitted program vmapped over them, the groups one after another. Policies learn on the
run's train questions only. After each chunk (in Python) the driver runs the group's policies
greedily on the held-out val questions (one jitted call), keeps each policy's best parameters by
val return when `keep == "best"`, updates the progress bar, appends learning curves (training
return beside val score) and writes a checkpoint, so a run can be resumed after its last finished
chunk. Every policy ends as a `PolicyParams` of the same shape, so evaluation, routers, reproduce
and live routing take the run's policies alike. On several devices the policy axis is sharded
across them (a group padded with copies of its last policy to a multiple of the device count);
the cache's state tables are replicated, or, for a cache too large for one device
(`shard_states`), split across the devices along the state axis, whose states are ordered
question by question.
"""

from __future__ import annotations

import json
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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dersim.env.der_env import (
    POLICY_SETTINGS,
    STATE_TABLES,
    EnvParams,
    make_params,
    pad_states,
)
from dersim.env.judge import JUDGE_FILE
from dersim.env.tables import EnvSpec, EnvTables, load_tables, split_roots
from dersim.errors import DersimError
from dersim.trainer.algorithms import DEFAULT_ALGO, Group, group_key, group_label, make_algorithm
from dersim.trainer.checkpoint import load_checkpoint, save_checkpoint
from dersim.trainer.exact_pg import FullInfoConfig
from dersim.trainer.greedy import make_greedy
from dersim.trainer.grid import expand_policies, policy_axes, stack_env_params, stack_hyper
from dersim.trainer.policy import PolicyParams
from dersim.trainer.ppo import PPOConfig, make_network
from dersim.trainer.selection import choose_policy

RUN_FILE = "run.json"
DEVICE_AXIS = "devices"  # the one mesh axis: policies and (when split) states are laid along it
CURVES = "curves.parquet"
KEEP = ("best", "last")
SHARD_STATES = ("auto", "on", "off")
# "auto" splits the state tables when they would fill more than this share of one device's memory.
AUTO_SHARD_SHARE = 0.25
CURVE_METRICS = (
    "episodes",
    "loss",
    "skipped_updates",
    "return",
    "final_score",
    "cost",
    "calls",
    "success",
)
VAL_METRICS = ("val_return", "val_score", "val_cost", "val_calls")


@struct.dataclass
class Best:
    """Per policy: the parameters with the best greedy val return so far, that return and its
    chunk."""

    params: PolicyParams
    val_return: jax.Array  # float32 [P], -inf before the first evaluation
    chunk: jax.Array  # int32 [P], -1 before the first evaluation


@struct.dataclass
class TrainState:
    """What a checkpoint holds: each group's algorithm state and best-by-val record (in group
    order), and how many chunks of the run are done (over all groups, in training order)."""

    groups: list[Any]
    best: list[Best]
    chunk: int


def base_settings(spec: EnvSpec, algo: str = DEFAULT_ALGO) -> dict[str, Any]:
    """Per-policy defaults: the algorithm and the environment spec's settings (the algorithm's
    learning defaults are filled in by `expand_policies`)."""
    return {"algo": algo, **{k: getattr(spec, k) for k in POLICY_SETTINGS}}


def prefer_evaluated(best: Best, last: PolicyParams) -> PolicyParams:
    """Each policy's best-by-val parameters where it was evaluated on val, else its last."""
    evaluated = np.asarray(best.chunk) >= 0
    return jax.tree.map(
        lambda b, p: jnp.where(evaluated.reshape((-1,) + (1,) * (b.ndim - 1)), b, p),
        best.params,
        last,
    )


def curve_rows(
    indices: np.ndarray,
    algo: str,
    summary: dict[str, np.ndarray],
    val: dict[str, np.ndarray] | None,
    chunk: int,
    updates: int,
    env_steps: int,
) -> list[dict[str, Any]]:
    """One row per policy of a group for one chunk: the algorithm's training figures (NaN where it
    has none) and the greedy val figures."""
    rows = []
    for position, policy in enumerate(indices.tolist()):
        row: dict[str, Any] = {
            "policy": policy,
            "algo": algo,
            "chunk": chunk,
            "updates": updates,
            "env_steps": env_steps,
        }
        for key in CURVE_METRICS:
            row[key] = float(summary[key][position]) if key in summary else float("nan")
        for key in VAL_METRICS:
            row[key] = float("nan") if val is None else float(val[key][position])
        rows.append(row)
    return rows


class GridTrainer:
    """A grid of routing policies over one cache: their stacked settings, their groups (one per
    algorithm), the greedy evaluation and the run directory.

    Make one with `from_grid` (a new run), `from_run` (a run directory's) or `open` (explicit
    policies); each reads the cache's tables and then constructs, which fits, compiles and trains
    nothing. `train` trains; `kept_params` and `greedy` evaluate.
    """

    @classmethod
    def from_grid(
        cls,
        cache: Path,
        out: Path,
        spec: EnvSpec,
        config: PPOConfig,
        grid: dict[str, list[Any]],
        seeds: int,
        steps: int,
        keep: str = "best",
        verify: bool = True,
        algo: str = DEFAULT_ALGO,
        full_info: FullInfoConfig = FullInfoConfig(),  # noqa: B008 (frozen)
        shard_states: str = "auto",
    ) -> GridTrainer:
        """The trainer of a new run: seeds x every grid combination.

        Args:
            cache: the cache directory.
            out: the run directory.
            spec: the environment's settings; unset per-policy values come from it, from `algo`
                and from the algorithms' defaults.
            config: PPO's settings (used by ppo policies).
            grid: setting name -> the values to cross (e.g. {"alpha": [0, 0.1], "algo": ["fqi"]}).
            seeds: seeds per grid point.
            steps: env steps per PPO policy.
            keep: "best" (each policy's best checkpoint by val return) or "last".
            verify: check the cache's table hashes.
            algo: the default algorithm (ppo, exact-pg or fqi).
            full_info: the full-information algorithms' settings.
            shard_states: split the state tables across several devices: "on", "off", or
                "auto" (when they would fill more than a quarter of one device's memory).

        Returns:
            The trainer, ready for `train`.
        """
        return cls.open(
            cache,
            out,
            spec,
            config,
            expand_policies(grid, seeds, base_settings(spec, algo)),
            steps,
            keep,
            verify,
            full_info,
            shard_states,
        )

    @classmethod
    def from_run(cls, run_dir: Path, cache: Path | None = None, verify: bool = True) -> GridTrainer:
        """The trainer of a finished or interrupted run, rebuilt from its run.json."""
        path = run_dir / RUN_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            settings = (
                Path(record["cache"]),
                EnvSpec(**record["env"]),
                PPOConfig(**record["ppo"]),
                record["policies"],
                record["steps_per_policy"],
                record.get("keep", "last"),
                FullInfoConfig(**record["full_info"]),
            )
        except FileNotFoundError:
            raise DersimError(f"{path}: not a training run directory") from None
        except json.JSONDecodeError as exc:
            raise DersimError(f"{path}: not valid JSON ({exc})") from None
        except (KeyError, TypeError) as exc:
            raise DersimError(f"{path}: not a run record of this dersim version ({exc})") from None
        run_cache, spec, config, policies, steps, keep, full_info = settings
        trainer = cls.open(
            cache or run_cache, run_dir, spec, config, policies, steps, keep, verify, full_info
        )
        trainer.run_cache = run_cache
        return trainer

    @classmethod
    def open(
        cls,
        cache: Path,
        out: Path,
        spec: EnvSpec,
        config: PPOConfig,
        policies: list[dict[str, Any]],
        steps: int,
        keep: str = "best",
        verify: bool = True,
        full_info: FullInfoConfig = FullInfoConfig(),  # noqa: B008 (frozen)
        shard_states: str = "auto",
    ) -> GridTrainer:
        """Check the run's settings, read the cache's tables for them (fitting the judge when a
        policy stops by it) and construct the trainer; `from_grid` documents the arguments.

        Raises:
            DersimError: a setting the run cannot use (one line naming it), or a damaged cache.
        """
        if keep not in KEEP:
            raise DersimError(f"--keep '{keep}': expected one of {', '.join(KEEP)}")
        if shard_states not in SHARD_STATES:
            raise DersimError(
                f"--shard-states '{shard_states}': expected one of {', '.join(SHARD_STATES)}"
            )
        if keep == "best" and spec.val_fraction <= 0:
            raise DersimError(
                "--keep best chooses checkpoints on the val split: it needs --val-fraction > 0 "
                "(or use --keep last)"
            )
        t_max_values = [p["t_max"] for p in policies if p.get("t_max") is not None]
        judged = [p for p in policies if p["terminator"] == "judge"]
        if any(p["p0"] != spec.p0 for p in judged):
            raise DersimError(
                "the judge terminator is fitted at one p0 (--p0): do not vary p0 with --grid for "
                "judge policies"
            )
        depth_spec = replace(spec, t_max=max(t_max_values) if t_max_values else spec.t_max)
        tables = load_tables(cache, depth_spec, with_judge=True if judged else None, verify=verify)
        return cls(tables, cache, out, spec, config, policies, steps, keep, full_info, shard_states)

    def __init__(
        self,
        tables: EnvTables,
        cache: Path,
        out: Path,
        spec: EnvSpec,
        config: PPOConfig,
        policies: list[dict[str, Any]],
        steps: int,
        keep: str = "best",
        full_info: FullInfoConfig = FullInfoConfig(),  # noqa: B008 (frozen)
        shard_states: str = "auto",
    ) -> None:
        """The trainer over `tables` (from `load_tables`): stacks the policies' settings and makes
        the network and each group's algorithm. Nothing is fitted, compiled or trained here (jitted
        functions compile on first use); use `open`, `from_grid` or `from_run` to read a cache."""
        self.tables = tables
        spec = replace(spec, metric=tables.metric, t_max=spec.t_max or tables.max_depth)
        self.cache, self.out, self.spec, self.config, self.keep = cache, out, spec, config, keep
        self.full_info = full_info
        # The cache the run trained on (from_run: as recorded, whatever `cache` is).
        self.run_cache = cache
        self.policies = [
            {**p, "t_max": spec.t_max if p.get("t_max") is None else p["t_max"]} for p in policies
        ]
        if any(p["t_max"] < 1 for p in self.policies):
            raise DersimError("--grid t_max values must be at least 1")
        self.steps = steps
        base = self._place_tables(make_params(self.tables), shard_states)
        self.env_params = stack_env_params(base, self.policies)
        self.hyper = stack_hyper(self.policies)
        self.axes = policy_axes(self.env_params)
        self.network = make_network(config, base)
        self.val_roots = (
            split_roots(self.tables, cache, "val")[0] if spec.val_fraction > 0 else None
        )
        self.greedy = make_greedy(self.network, self.axes)
        self.groups = self._make_groups(base)
        self.n_chunks = sum(g.algorithm.n_chunks for g in self.groups)

    def _make_groups(self, base) -> list[Group]:
        """The policies of each algorithm (fqi: each regressor and target rule), in order of
        appearance."""
        keys = list(dict.fromkeys(group_key(p) for p in self.policies))
        groups = []
        for key in keys:
            indices = np.array([i for i, p in enumerate(self.policies) if group_key(p) == key])
            members = [self.policies[i] for i in indices]
            # Copies of the last policy pad the group to a multiple of the device count; they are
            # trained like it and dropped from every result and checkpoint.
            members += [members[-1]] * self._padding(len(members))
            env_params, hyper = stack_env_params(base, members), stack_hyper(members)
            algorithm = make_algorithm(
                key,
                members,
                self.config,
                self.full_info,
                self.network,
                env_params,
                self.axes,
                hyper,
                self.tables.roots,
                self.steps,
            )
            groups.append(Group(group_label(key), indices, env_params, hyper, algorithm))
        return groups

    def _place_tables(self, base: EnvParams, shard_states: str) -> EnvParams:
        """`base` with its state tables split across the devices along the state axis (padded
        with inert states to a multiple of the device count) when `shard_states` asks for it;
        `self.state_shards` says across how many devices (1: replicated)."""
        devices = jax.devices()
        size = sum(getattr(base, name).nbytes for name in STATE_TABLES)
        limit = (devices[0].memory_stats() or {}).get("bytes_limit")
        wanted = shard_states == "on" or (
            shard_states == "auto" and limit is not None and size > AUTO_SHARD_SHARE * limit
        )
        self.state_shards = len(devices) if wanted and len(devices) > 1 else 1
        if self.state_shards == 1:
            return base
        padded = pad_states(base, self.state_shards)
        split = NamedSharding(_mesh(), P(DEVICE_AXIS))
        return padded.replace(
            **{name: jax.device_put(getattr(padded, name), split) for name in STATE_TABLES}
        )

    @staticmethod
    def _padding(n_policies: int) -> int:
        """Policies to add to a group of `n_policies` so that it divides the device count (none on
        one device)."""
        devices = len(jax.devices())
        return 0 if devices < 2 else -n_policies % devices

    def _shard(self, tree: Any) -> Any:
        """Place a group's per-policy leaves (leading axis, padded to divide the device count) on
        the device mesh, when there is one."""
        devices = jax.devices()
        if len(devices) < 2 or not jax.tree.leaves(tree):
            return tree
        return jax.device_put(tree, NamedSharding(_mesh(), P(DEVICE_AXIS)))

    def _resize(self, state: TrainState, padded: bool) -> TrainState:
        """`state` with each group's padding policies dropped (not `padded`: what a checkpoint
        holds) or added back as copies of its last policy (`padded`: what training runs on)."""
        groups, bests = [], []
        for group, group_state, best in zip(self.groups, state.groups, state.best, strict=True):
            n = len(group.indices)
            size = n + self._padding(n)

            def resize(x: Any, n: int = n, size: int = size) -> Any:
                if n == size or not np.ndim(x):
                    return x
                if not padded:
                    return x[:n] if x.shape[0] == size else x
                if x.shape[0] != n:
                    return x
                return jnp.concatenate([x, jnp.repeat(x[-1:], size - n, axis=0)])

            groups.append(
                self._shard(jax.tree.map(resize, group_state))
                if padded
                else jax.tree.map(resize, group_state)
            )
            bests.append(jax.tree.map(resize, best))
        return TrainState(groups=groups, best=bests, chunk=state.chunk)

    def initial_state(self) -> TrainState:
        """The state before training: each group's initial algorithm state, no val record, no chunk
        done."""
        states, bests = [], []
        for group in self.groups:
            # Policies that share a seed share their initial weights (and PPO's env draws): grid
            # points compare fairly.
            seeds = [self.policies[i]["seed"] for i in group.indices]
            n = len(seeds) + self._padding(len(seeds))
            seeds += [seeds[-1]] * (n - len(seeds))
            state = group.algorithm.init(
                jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, dtype=np.uint32))
            )
            states.append(self._shard(state))
            bests.append(
                Best(
                    params=jax.tree.map(jnp.copy, group.algorithm.policy_params(state)),
                    val_return=jnp.full(n, -jnp.inf, jnp.float32),
                    chunk=jnp.full(n, -1, jnp.int32),
                )
            )
        return TrainState(groups=states, best=bests, chunk=0)

    def run_record(self) -> dict[str, Any]:
        """What run.json holds: the settings to rebuild the trainer, and the cache's identity (its
        manifest digest: `route`, `serve` and `eval` refuse another cache, a moved copy passes)."""
        from dersim.cache.files import manifest_digest

        return {
            "cache": str(self.cache),
            "cache_digest": manifest_digest(self.cache),
            "env": asdict(self.spec),
            "ppo": asdict(self.config),
            "full_info": asdict(self.full_info),
            "policies": self.policies,
            "steps_per_policy": self.steps,
            "n_chunks": self.n_chunks,
            "keep": self.keep,
            "cost_scale": self.tables.cost_scale,
        }

    def load(self) -> TrainState:
        """The run directory's last checkpoint (padded for this machine's devices)."""
        template = self._resize(self.initial_state(), padded=False)
        return self._resize(load_checkpoint(self.out, template), padded=True)

    def kept_params(self, state: TrainState) -> PolicyParams:
        """The parameters to evaluate and deploy.

        Args:
            state: a `TrainState` (from `train` or `load`).

        Returns:
            Every policy's parameters in run order (leading policy axis): its best by val return
            under keep "best" (where it was evaluated), else its last.
        """
        parts = []
        for group, group_state, best in zip(self.groups, state.groups, state.best, strict=True):
            last = group.algorithm.policy_params(group_state)
            if self.keep == "best":
                last = prefer_evaluated(best, last)
            n = len(group.indices)
            parts.append(jax.tree.map(lambda x, n=n: x[:n], last))
        order = np.argsort(np.concatenate([g.indices for g in self.groups]), kind="stable")
        return jax.tree.map(lambda *leaves: jnp.concatenate(leaves)[order], *parts)

    def _resume(self) -> tuple[TrainState, list[dict[str, Any]]]:
        """The last checkpoint and the curves up to it; the run must be the same (settings compared
        through their JSON form)."""
        path = self.out / RUN_FILE
        if not path.exists():
            raise DersimError(
                f"{self.out}: nothing to resume (no {RUN_FILE}); train without --resume"
            )
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if recorded != json.loads(json.dumps(self.run_record())):
            raise DersimError(
                f"{path}: --resume needs the same cache, grid, seeds, steps and settings as the "
                "run being resumed"
            )
        state = self.load()
        chunk = int(state.chunk)
        curves = (
            pl.read_parquet(self.out / CURVES).filter(pl.col("run_chunk") < chunk).to_dicts()
            if (self.out / CURVES).exists()
            else []
        )
        return state, curves

    def validate(
        self, params: PolicyParams, env_params: Any = None
    ) -> dict[str, np.ndarray] | None:
        """Per policy: greedy mean return, score, cost and calls on the val questions (None without
        val); `env_params` are the policies' stacked settings (default: every policy of the run)."""
        if self.val_roots is None:
            return None
        result = self.greedy(
            params, self.env_params if env_params is None else env_params, self.val_roots
        )
        return {
            "val_return": result["return"].mean(axis=1),
            "val_score": self.tables.score[result["final_state"]].mean(axis=1),
            "val_cost": result["env_cost"].mean(axis=1),
            "val_calls": result["calls"].mean(axis=1),
        }

    def best_on_val(self, state: TrainState) -> dict[str, float] | None:
        """The chosen policy and its val figures (kept parameters), or None without val or
        deployable policies."""
        val = self.validate(self.kept_params(state))
        if val is None:
            return None
        chosen = choose_policy(self.policies, val["val_score"], val["val_cost"], self.spec)
        return (
            None
            if chosen is None
            else {"policy": chosen, **{k: float(v[chosen]) for k, v in val.items()}}
        )

    @staticmethod
    def keep_best(best: Best, params: PolicyParams, val_return: np.ndarray, chunk: int) -> Best:
        improved = val_return > np.asarray(best.val_return)
        params = jax.tree.map(
            lambda b, p: jnp.where(improved.reshape((-1,) + (1,) * (b.ndim - 1)), p, b),
            best.params,
            params,
        )
        return Best(
            params=params,
            val_return=jnp.where(improved, val_return, best.val_return),
            chunk=jnp.where(improved, chunk, best.chunk),
        )

    def chunk_plan(self) -> list[tuple[int, int]]:
        """(group index, the group's own chunk index) of every chunk of the run, in training
        order."""
        return [
            (g, c) for g, group in enumerate(self.groups) for c in range(group.algorithm.n_chunks)
        ]

    def train(
        self, resume: bool = False, show_progress: bool = True, stop_after: int | None = None
    ) -> tuple[TrainState, pl.DataFrame]:
        """Train every chunk of the run, checkpointing after each.

        Args:
            resume: continue from the run directory's last checkpoint (same settings required).
            show_progress: show a progress bar with the rate and the best val figures.
            stop_after: train at most this many chunks now (None: all that remain).

        Returns:
            (the final `TrainState`, the learning curves: one row per policy per chunk).

        Raises:
            DersimError: a --resume whose settings differ from the run's, or a damaged checkpoint.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        state, curves = self._resume() if resume else (self.initial_state(), [])
        if self.tables.judge is not None:
            self.tables.judge.save(self.out / JUDGE_FILE)
        (self.out / RUN_FILE).write_text(json.dumps(self.run_record(), indent=2), encoding="utf-8")
        plan, first_chunk = self.chunk_plan(), int(state.chunk)
        groups, bests = list(state.groups), list(state.best)
        with Progress(
            TextColumn("[bold]training {task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[val]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not show_progress,
        ) as progress:
            task = progress.add_task(
                "train", total=self.n_chunks, completed=first_chunk, label="", rate="", val=""
            )
            last_chunk = (
                self.n_chunks
                if stop_after is None
                else min(self.n_chunks, first_chunk + stop_after)
            )
            for run_chunk in range(first_chunk, last_chunk):
                g, chunk = plan[run_chunk]
                group = self.groups[g]
                algorithm = group.algorithm
                started = time.perf_counter()
                groups[g], summary = algorithm.train_chunk(groups[g])
                jax.block_until_ready(groups[g])
                seconds = time.perf_counter() - started
                params = algorithm.policy_params(groups[g])
                val = self.validate(params, group.env_params)
                if val is not None and self.keep == "best":
                    bests[g] = self.keep_best(bests[g], params, val["val_return"], chunk)
                rows = curve_rows(
                    group.indices,
                    group.label,
                    summary,
                    val,
                    chunk,
                    (chunk + 1) * algorithm.updates_per_chunk,
                    (chunk + 1) * algorithm.steps_per_chunk,
                )
                curves.extend({**row, "run_chunk": run_chunk} for row in rows)
                pl.DataFrame(curves).write_parquet(self.out / CURVES)
                done = TrainState(groups=groups, best=bests, chunk=run_chunk + 1)
                save_checkpoint(self.out, self._resize(done, padded=False))
                rate = (
                    f"{len(group.indices) * algorithm.steps_per_chunk / seconds / 1e3:,.0f}k "
                    "env-steps/s"
                    if algorithm.steps_per_chunk
                    else f"{len(group.indices) / seconds:,.1f} policy-chunks/s"
                )
                progress.update(
                    task,
                    advance=1,
                    label=f"{len(group.indices)} {group.label} policies",
                    rate=rate,
                    val="" if val is None else f"val score {float(np.max(val['val_score'])):.3f}",
                )
        self.finished = last_chunk == self.n_chunks
        return TrainState(groups=groups, best=bests, chunk=last_chunk), pl.DataFrame(curves)


def _mesh() -> Mesh:
    """The devices as one mesh axis, shared by the policy and state shardings (one jitted program
    sees one mesh)."""
    return Mesh(np.array(jax.devices()), (DEVICE_AXIS,))
