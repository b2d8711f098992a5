"""`der-fqi`: a DER policy trained by fitted Q-iteration (`dersim.trainer.fqi`), judged as a router.

It goes through the routers' own protocol, so that it meets them on equal terms: its hyperparameters
(the ridge strength l2 and T_max, the longest route) are chosen by val AIQ after fitting on train,
it is refitted on train + val, and it is swept over the same willingness-to-pay values (as the
cost weight alpha of the final-answer reward, on the cache's cost scale). It learns from what a
router's `fit` may see: the train questions' states (`TrainData.answer_states`, with their scores)
and the world's calls; at routing time it reads embeddings only. A route may take several calls
with knowledge transfer and stop on its own (the learned STOP). With T_max = 1 it is the `linear`
router; where longer routes pay on val, it takes them.
"""

from __future__ import annotations

from typing import Any, Self

import jax
import numpy as np

from dersim.env.der_env import make_params
from dersim.env.judge import oracle_noise
from dersim.env.tables import EnvSpec, EnvTables
from dersim.routers.base import LAMBDAS, Questions, Router, Routes, TrainData
from dersim.trainer.algorithms import with_defaults
from dersim.trainer.exact_pg import FullInfoConfig
from dersim.trainer.fqi import FittedQ
from dersim.trainer.greedy import make_greedy
from dersim.trainer.grid import policy_axes, stack_env_params, stack_hyper
from dersim.trainer.ppo import PPOConfig, make_network


class DERFQIRouter(Router):
    """fqi with ridge over the routers' willingness-to-pay grid (one policy per value).

    Parameters
    ----------
    l2 : float, default=10.0
        Ridge strength of the linear action-value heads; chosen on val from `search`.
    t_max : int, default=1
        Longest route in calls (1: the `linear` router's single call); chosen on val among
        1 .. the cache's depth.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "der-fqi"
    search = {"l2": (1.0, 10.0, 100.0)}

    @classmethod
    def candidates(cls, train: TrainData, depth: int) -> list[dict[str, Any]]:
        return [
            {"l2": l2, "t_max": t_max} for l2 in cls.search["l2"] for t_max in range(1, depth + 1)
        ]

    def __init__(self, l2: float = 10.0, t_max: int = 1, seed: int = 0) -> None:
        super().__init__(seed)
        self.l2, self.t_max = l2, t_max

    def fit(self, train: TrainData) -> Self:
        world = train.questions.world
        n_states = world.next_state.shape[0]
        score = np.zeros(n_states, np.float32)  # scores of the train questions' states only
        score[train.answer_states] = train.answer_score
        spec = EnvSpec(metric=train.metric, t_max=self.t_max, val_fraction=0.0)
        tables = EnvTables(
            next_state=world.next_state,
            score=score,
            cost=world.cost,
            embedding=world.embedding,
            depth=np.zeros(n_states, np.int32),
            judge_prob=np.zeros(n_states, np.float32),
            noise=oracle_noise(n_states, 0),
            roots=np.asarray(train.questions.roots, np.int32),
            question_ids=(),
            expert_names=(),
            max_depth=self.t_max,
            metric=train.metric,
            cost_scale=train.cost_scale,
            judge=None,
            spec=spec,
        )
        base = make_params(tables)
        policies = [
            with_defaults(
                {
                    "algo": "fqi",
                    "l2": self.l2,
                    "alpha": float(w),
                    "beta": 0.0,
                    "gamma": 0.0,
                    "p0": spec.p0,
                    "t_max": self.t_max,
                    "terminator": "learned",
                    "reward": "final",
                    "judge_error": 0.0,
                    "judge_threshold": 0.5,
                    "seed": 0,
                }
            )
            for w in LAMBDAS
        ]
        env_params = stack_env_params(base, policies)
        axes = policy_axes(env_params)
        network = make_network(PPOConfig(), base)
        fqi = FittedQ(
            FullInfoConfig(),
            network,
            env_params,
            axes,
            stack_hyper(policies),
            np.full(len(policies), self.l2),
            "ridge",
            "policy",
            tables.roots,
        )
        state, _ = fqi.train_chunk(
            fqi.init(jax.vmap(jax.random.PRNGKey)(np.zeros(len(policies), np.uint32)))
        )
        self.params_, self.env_params_ = fqi.policy_params(state), env_params
        self.greedy_ = make_greedy(network, axes)
        self.n_experts_ = world.n_experts
        return self

    def grid(self) -> np.ndarray:
        return LAMBDAS

    def sweep(self, questions: Questions) -> list[Routes]:
        actions = self.greedy_(self.params_, self.env_params_, questions.roots)[
            "actions"
        ]  # [P, Q, D]
        calls = np.where((actions >= 0) & (actions < self.n_experts_), actions, -1).astype(np.int64)
        return [Routes(per_policy, transfer=True) for per_policy in calls]

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        return self.sweep(questions)[int(np.argmin(np.abs(LAMBDAS - willingness_to_pay)))]
