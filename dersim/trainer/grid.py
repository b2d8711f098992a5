"""The policy axis: seeds x a hyperparameter grid, as one row per policy and as stacked arrays.

`--grid name=v1,v2,...` (repeatable) varies a per-policy setting: the algorithm (algo) and its
learning settings (lr, ent_coef, clip_eps, vf_coef, discount, gae_lambda for PPO; lr and ent_coef
for exact-pg; l2, regressor and fqi_target for fqi) and environment ones (alpha, beta, gamma, p0,
t_max, terminator, reward, judge_error, judge_threshold). A key an algorithm does not read does not
multiply its policies. Numeric settings are array leaves, so one jitted program trains every
combination of an algorithm's group.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax.numpy as jnp
import numpy as np

from dersim.env import REWARDS, TERMINATORS
from dersim.env.der_env import POLICY_SETTINGS, EnvParams
from dersim.errors import DersimError
from dersim.trainer.algorithms import CHOICES as ALGO_CHOICES
from dersim.trainer.algorithms import LEARNING_KEYS, with_defaults
from dersim.trainer.ppo import HYPER_DEFAULTS, Hyper

ENV_KEYS = POLICY_SETTINGS
GRID_KEYS = (*LEARNING_KEYS, *ENV_KEYS)
CHOICES = {"terminator": TERMINATORS, "reward": REWARDS, **ALGO_CHOICES}
# Allowed ranges of the numeric settings (inclusive unless noted), checked when the grid is parsed.
RANGES = {
    "lr": (0.0, None),
    "ent_coef": (0.0, None),
    "clip_eps": (0.0, None),
    "vf_coef": (0.0, None),
    "discount": (0.0, 1.0),
    "gae_lambda": (0.0, 1.0),
    "p0": (0.0, 1.0),
    "judge_error": (0.0, 1.0),
    "judge_threshold": (0.0, 1.0),
    "l2": (0.0, None),
}
POSITIVE = ("lr", "clip_eps")  # must be > 0, not just >= 0


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
            raise GridError(
                f"--grid '{option}': unknown setting '{name}' (known: {', '.join(GRID_KEYS)})"
            )
        if name in grid:
            raise GridError(f"--grid '{option}': '{name}' is given twice")
        items = [v.strip() for v in values.split(",") if v.strip()]
        try:
            if name in CHOICES:
                unknown = [v for v in items if v not in CHOICES[name]]
                if unknown:
                    raise ValueError(
                        f"unknown {name} '{unknown[0]}' (known: {', '.join(CHOICES[name])})"
                    )
                grid[name] = items
            elif name == "t_max":
                grid[name] = [int(v) for v in items]
            else:
                grid[name] = [check_value(name, float(v)) for v in items]
        except ValueError as exc:
            raise GridError(f"--grid '{option}': {exc}") from None
    return grid


def check_value(name: str, value: float) -> float:
    """A finite value within the setting's range (ValueError naming the problem otherwise)."""
    low, high = RANGES.get(name, (None, None))
    if not np.isfinite(value):
        raise ValueError(f"{name} = {value} is not a finite number")
    if (
        (low is not None and value < low)
        or (high is not None and value > high)
        or (name in POSITIVE and value <= 0)
    ):
        bound = (
            "> 0"
            if name in POSITIVE
            else f"within [{low:g}, {high:g}]"
            if high is not None
            else f">= {low:g}"
        )
        raise ValueError(f"{name} = {value:g} must be {bound}")
    return value


def expand_policies(
    grid: dict[str, list[Any]], seeds: int, base: dict[str, Any]
) -> list[dict[str, Any]]:
    """One dict per policy: every grid combination, each with `seeds` seeds (seed varies fastest);
    the learning settings an algorithm does not read take its defaults, and the duplicates this
    makes (l2 varied under PPO, say) are dropped."""
    names = list(grid)
    policies: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for combination in itertools.product(*(grid[n] for n in names)):
        for seed in range(seeds):
            policy = with_defaults(
                {**base, **dict(zip(names, combination, strict=True)), "seed": seed}
            )
            key = tuple(sorted(policy.items()))
            if key not in seen:
                seen.add(key)
                policies.append(policy)
    return policies


def stack_hyper(policies: list[dict[str, Any]]) -> Hyper:
    return Hyper(**{k: jnp.asarray([p[k] for p in policies], jnp.float32) for k in HYPER_DEFAULTS})


def stack_env_params(base: EnvParams, policies: list[dict[str, Any]]) -> EnvParams:
    """`base` with its per-policy leaves replaced by per-policy vectors (tables stay shared)."""
    values = {}
    for key in ENV_KEYS:
        column = [p[key] for p in policies]
        if key in CHOICES:
            column = [CHOICES[key].index(v) for v in column]
        values[key] = jnp.asarray(column, getattr(base, key).dtype)
    return base.replace(**values)


def policy_axes(params: EnvParams) -> EnvParams:
    """vmap in_axes for stacked EnvParams: the cache tables are shared, per-policy settings are
    mapped."""
    return params.replace(
        next_state=None,
        score=None,
        cost=None,
        embedding=None,
        judge_prob=None,
        noise=None,
        roots=None,
        cost_scale=None,
        **dict.fromkeys(ENV_KEYS, 0),
    )
