"""Random routing: the baselines every learned router must beat.

`random` (Blending, arXiv 2401.02994): each question goes to an expert drawn uniformly; one point.
`random-mix` (RouteLLM's random router): each question goes to the strong expert (best single on
train) with probability p, else to the weak one (cheapest on train); sweeping p from 0 to 1 traces
the straight line from weak to strong, whose APGR is 0.5 in expectation. One uniform draw per
question and seed serves every p, so a larger p only moves questions from weak to strong.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from dersim.routers.base import Questions, Router, Routes, TrainData


def weak_and_strong(train: TrainData) -> tuple[int, int]:
    """(cheapest expert, best expert) by mean first-call cost and score on the train questions; ties
    go to the better (for weak) or the cheaper (for strong) expert, then the lower id."""
    cost, score = train.expert_cost, train.expert_score
    weak = int(np.lexsort((np.arange(len(cost)), -score, cost))[0])
    strong = int(np.lexsort((np.arange(len(cost)), cost, -score))[0])
    return weak, strong


class RandomRouter(Router):
    """Each question goes to an expert drawn uniformly at random (one point, no sweep).

    Parameters
    ----------
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "random"
    stochastic = True

    def fit(self, train: TrainData) -> Self:
        self.n_experts_ = train.score.shape[1]
        return self

    def grid(self) -> np.ndarray:
        return np.zeros(1)

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        rng = np.random.default_rng(self.seed)
        return Routes.single(rng.integers(0, self.n_experts_, size=len(questions)))


class RandomMixRouter(Router):
    """Each question goes to the strong expert with probability p, else to the weak one; the
    sweep runs p from 0 to 1 (APGR 0.5 in expectation).

    Parameters
    ----------
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "random-mix"
    stochastic = True

    def fit(self, train: TrainData) -> Self:
        self.weak_, self.strong_ = weak_and_strong(train)
        return self

    def grid(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, 21)

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        draws = np.random.default_rng(self.seed).random(len(questions))
        return Routes.single(np.where(draws < willingness_to_pay, self.strong_, self.weak_))
