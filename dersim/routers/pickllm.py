"""`pickllm` (arXiv 2407.12820): stateless Q-learning over the experts, blind to the question.

One Q value per expert, learned by epsilon-greedy play over the train questions in a seeded random
order (two passes) with the update Q(e) += eta * (reward - Q(e)), where the reward is the expert's
score - lambda * cost / cost_scale; each cost weight lambda of the sweep learns its own Q values.
Routing sends every question to the expert with the best Q value: a learned single expert per
lambda, the non-contextual baseline of the learned routers.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from dersim.routers.base import LAMBDAS, Questions, Router, Routes, TrainData

PASSES = 2
EPSILON = 0.1


class PickLLMRouter(Router):
    """PickLLM: stateless epsilon-greedy Q-learning over the experts, blind to the question.

    Parameters
    ----------
    eta : float, default=0.1
        Learning rate of the update Q(e) += eta * (reward - Q(e)).
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "pickllm"
    stochastic = True
    search = {"eta": (0.05, 0.2)}

    def __init__(self, eta: float = 0.1, seed: int = 0) -> None:
        super().__init__(seed)
        self.eta = eta

    def grid(self) -> np.ndarray:
        return LAMBDAS[::2]

    def fit(self, train: TrainData) -> Self:
        lambdas, (n_questions, n) = self.grid(), train.score.shape
        reward = (
            train.score[None] - lambdas[:, None, None] * train.cost[None] / train.cost_scale
        )  # [L, Q, N]
        lanes = np.arange(len(lambdas))
        value = np.zeros((len(lambdas), n))
        rng = np.random.default_rng(self.seed)
        for question in np.concatenate([rng.permutation(n_questions) for _ in range(PASSES)]):
            explore = rng.random(len(lambdas)) < EPSILON
            arm = np.where(explore, rng.integers(0, n, len(lambdas)), value.argmax(axis=1))
            value[lanes, arm] += self.eta * (reward[lanes, question, arm] - value[lanes, arm])
        self.value_ = value
        return self

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        lane = int(np.flatnonzero(self.grid() == willingness_to_pay)[0])
        return Routes.single(np.full(len(questions), self.value_[lane].argmax()))
