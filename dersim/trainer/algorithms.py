"""The training algorithms a run can mix (`--algo`, or `--grid algo=...`), their defaults, and the
groups they train in.

- `ppo`: the paper's algorithm, from sampled episodes (`dersim.trainer.ppo`);
- `exact-pg`: gradient ascent on the exact return computed from the whole cache (`exact_pg`);
- `fqi`: fitted Q-iteration from the whole cache, ridge or MLP regressor (`fqi`).

A policy's settings hold every key; the ones its algorithm does not use keep that algorithm's
defaults, so a grid key an algorithm ignores (l2 for PPO, clip_eps for fqi, the seed for fqi with
ridge) does not multiply its policies. Policies of one algorithm (and, for fqi, one regressor and
target rule) train together as a group: one jitted program each, vmapped over the group's policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax
import numpy as np

from dersim.env.der_env import EnvParams
from dersim.env.subgraph import question_rows
from dersim.trainer.exact_pg import ExactPG, FullInfoConfig
from dersim.trainer.fqi import REGRESSORS, TARGETS, FittedQ
from dersim.trainer.network import ActorCritic
from dersim.trainer.policy import PolicyParams
from dersim.trainer.ppo import HYPER_DEFAULTS, PPO, Hyper, PPOConfig

ALGOS = ("ppo", "exact-pg", "fqi")
DEFAULT_ALGO = "fqi"
# Every learning setting a policy carries, with each algorithm's default.
LEARNING_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {**HYPER_DEFAULTS, "l2": 0.0, "regressor": "ridge", "fqi_target": "policy"},
    "exact-pg": {
        **HYPER_DEFAULTS,
        "lr": 1e-2,
        "ent_coef": 0.1,
        "l2": 0.0,
        "regressor": "ridge",
        "fqi_target": "policy",
    },
    "fqi": {
        **HYPER_DEFAULTS,
        "lr": 1e-3,
        "ent_coef": 0.0,
        "l2": 10.0,
        "regressor": "ridge",
        "fqi_target": "policy",
    },
}
# The learning settings each algorithm reads (the others stay at its defaults).
USES: dict[str, tuple[str, ...]] = {
    "ppo": tuple(HYPER_DEFAULTS),
    "exact-pg": ("lr", "ent_coef"),
    "fqi": ("l2", "regressor", "fqi_target", "lr"),
}
LEARNING_KEYS = ("algo", *LEARNING_DEFAULTS["ppo"])
CHOICES = {"algo": ALGOS, "regressor": REGRESSORS, "fqi_target": TARGETS}


def with_defaults(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy with every learning setting its algorithm does not read reset to that algorithm's
    default (and the seed to 0 for fqi with ridge, a closed form that no seed changes)."""
    algo = policy["algo"]
    defaults = LEARNING_DEFAULTS[algo]
    used = USES[algo]
    out = {**policy, **{k: v for k, v in defaults.items() if k not in used or k not in policy}}
    if algo == "fqi" and out["regressor"] == "ridge" and "seed" in out:
        out["seed"] = 0
    return out


class Algorithm(Protocol):
    """What a group's trainer offers the run driver."""

    name: str
    n_chunks: int
    updates_per_chunk: int  # gradient updates (or fits) per chunk, for the curves' x axis
    steps_per_chunk: int  # env steps per policy per chunk (0 for the full-information trainers)

    def init(self, keys: jax.Array) -> Any: ...

    def train_chunk(self, state: Any) -> tuple[Any, dict[str, np.ndarray]]: ...

    def policy_params(self, state: Any) -> PolicyParams: ...


@dataclass
class Group:
    """Policies trained together: their indices in the run, their stacked settings and their
    trainer."""

    label: str  # "ppo", "exact-pg", "fqi (ridge, policy targets)"
    indices: np.ndarray
    env_params: EnvParams
    hyper: Hyper
    algorithm: Algorithm


def group_key(policy: dict[str, Any]) -> tuple[str, ...]:
    if policy["algo"] == "fqi":
        return "fqi", policy["regressor"], policy["fqi_target"]
    return (policy["algo"],)


def group_label(key: tuple[str, ...]) -> str:
    return key[0] if len(key) == 1 else f"{key[0]} ({key[1]}, {key[2]} targets)"


def make_algorithm(
    key: tuple[str, ...],
    policies: list[dict[str, Any]],
    config: PPOConfig,
    full_info: FullInfoConfig,
    network: ActorCritic,
    env_params: EnvParams,
    axes: EnvParams,
    hyper: Hyper,
    train_roots: np.ndarray,
    steps: int,
) -> Algorithm:
    if key[0] == "ppo":
        return PPO(config, network, env_params, axes, hyper, steps)
    if key[0] == "exact-pg":
        rows = question_rows(
            np.asarray(env_params.next_state),
            train_roots,
            env_params.max_depth,
            env_params.last_action_obs,
        )
        return ExactPG(full_info, network, env_params, axes, hyper, rows)
    return FittedQ(
        full_info,
        network,
        env_params,
        axes,
        hyper,
        np.array([p["l2"] for p in policies]),
        key[1],
        key[2],
        train_roots,
    )
