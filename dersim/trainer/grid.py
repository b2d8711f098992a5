"""The policy axis: seeds x a hyperparameter grid, as one row per policy and as stacked arrays.

`--grid name=v1,v2,...` (repeatable) varies a per-policy setting: learning ones (lr, ent_coef,
clip_eps, vf_coef, discount, gae_lambda) and environment ones (alpha, beta, gamma, p0, t_max,
terminator). All of them are array leaves, so one jitted program trains every combination.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax.numpy as jnp
import numpy as np

from dersim.env import TERMINATORS
from dersim.env.der_env import EnvParams
from dersim.errors import DersimError
from dersim.trainer.ppo import HYPER_DEFAULTS, Hyper

ENV_KEYS = ("alpha", "beta", "gamma", "p0", "t_max", "terminator")
GRID_KEYS = (*HYPER_DEFAULTS, *ENV_KEYS)


class GridError(DersimError):
    """A malformed --grid option."""


def parse_grid(options: tuple[str, ...]) -> dict[str, list[Any]]:
    """`("lr=1e-3,3e-4", "terminator=oracle,learned")` -> {"lr": [0.001, 0.0003], ...}."""
    grid: dict[str, list[Any]] = {}
    for option in options:
        name, sep, values = option.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise GridError(f"--grid '{option}': expected name=v1,v2,...")
        if name not in GRID_KEYS:
            raise GridError(f"--grid '{option}': unknown setting '{name}' (known: {', '.join(GRID_KEYS)})")
        if name in grid:
            raise GridError(f"--grid '{option}': '{name}' is given twice")
        items = [v.strip() for v in values.split(",") if v.strip()]
        try:
            if name == "terminator":
                unknown = [v for v in items if v not in TERMINATORS]
                if unknown:
                    raise ValueError(f"unknown terminator '{unknown[0]}' (known: {', '.join(TERMINATORS)})")
                grid[name] = items
            elif name == "t_max":
                grid[name] = [int(v) for v in items]
            else:
                grid[name] = [float(v) for v in items]
        except ValueError as exc:
            raise GridError(f"--grid '{option}': {exc}") from None
    return grid


def expand_policies(grid: dict[str, list[Any]], seeds: int, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per policy: every grid combination, each with `seeds` seeds (seed varies fastest)."""
    names = list(grid)
    policies = []
    for combination in itertools.product(*(grid[n] for n in names)):
        for seed in range(seeds):
            policies.append({**base, **dict(zip(names, combination, strict=True)), "seed": seed})
    return policies


def stack_hyper(policies: list[dict[str, Any]]) -> Hyper:
    return Hyper(**{k: jnp.asarray([p[k] for p in policies], jnp.float32) for k in HYPER_DEFAULTS})


def stack_env_params(base: EnvParams, policies: list[dict[str, Any]]) -> EnvParams:
    """`base` with its reward leaves replaced by per-policy vectors (tables stay shared)."""
    values = {k: np.asarray([p[k] for p in policies]) for k in ENV_KEYS}
    values["terminator"] = np.asarray([TERMINATORS.index(t) for t in values["terminator"]])
    return base.replace(
        alpha=jnp.asarray(values["alpha"], jnp.float32), beta=jnp.asarray(values["beta"], jnp.float32),
        gamma=jnp.asarray(values["gamma"], jnp.float32), p0=jnp.asarray(values["p0"], jnp.float32),
        t_max=jnp.asarray(values["t_max"], jnp.int32), terminator=jnp.asarray(values["terminator"], jnp.int32))


def policy_axes(params: EnvParams) -> EnvParams:
    """vmap in_axes for stacked EnvParams: the cache tables are shared, reward leaves are per policy."""
    shared = params.replace(next_state=None, score=None, cost=None, embedding=None, roots=None)
    return shared.replace(alpha=0, beta=0, gamma=0, p0=0, t_max=0, terminator=0)
