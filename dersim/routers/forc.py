"""`forc`: Fly-swat or cannon (FORC, arXiv 2308.12919): a meta-model predicts every expert's score
and cost on each question, then questions are assigned to experts to maximise the total predicted
score under a total budget.

Scores and per-question costs are predicted by ridge regressions on the question's embedding
(costs differ per question when they are tokens or dollars). The assignment under a mean budget B
per question is solved through its Lagrangian: each question takes argmax_e score - mu * cost, with
the least mu >= 0 whose predicted total cost stays within Q * B (bisection). The sweep runs B from
the cheapest to the dearest expert's mean train cost.
"""

from __future__ import annotations

from typing import Self

import numpy as np
from sklearn.linear_model import Ridge

from dersim.routers.base import Questions, Router, Routes, TrainData, tradeoff

BISECTIONS = 50


class FORCRouter(Router):
    """FORC: predicted score and cost per expert, assigned under a mean budget per question.

    Parameters
    ----------
    l2 : float, default=1.0
        Ridge strength of the score and cost regressions.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "forc"
    search = {"l2": (0.1, 1.0, 10.0)}

    def __init__(self, l2: float = 1.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.l2 = l2

    def fit(self, train: TrainData) -> Self:
        x = train.questions.embedding
        self.score_model_ = Ridge(alpha=self.l2).fit(x, train.score)
        self.cost_model_ = Ridge(alpha=self.l2).fit(x, train.cost / train.cost_scale)
        self.cost_scale_ = train.cost_scale
        self.floor_ = float(train.cost.min()) / train.cost_scale
        self.expert_cost_ = train.expert_cost
        return self

    def grid(self) -> np.ndarray:
        return np.linspace(self.expert_cost_.min(), self.expert_cost_.max(), 21)

    def predictions(self, questions: Questions) -> tuple[np.ndarray, np.ndarray]:
        """(score [Q, N], cost [Q, N] in units of cost_scale, at least the cheapest train call)."""
        x = questions.embedding
        return self.score_model_.predict(x), np.maximum(
            self.cost_model_.predict(x), max(self.floor_, 1e-9)
        )

    def assign(self, score: np.ndarray, cost: np.ndarray, budget: float) -> Routes:
        limit = budget / self.cost_scale_ * len(score)

        def spent(mu: float) -> float:
            chosen = tradeoff(score, cost, 1.0, mu)
            return float(cost[np.arange(len(score)), chosen].sum())

        if spent(0.0) <= limit:
            return Routes.single(tradeoff(score, cost, 1.0, 0.0))
        low, high = 0.0, 1.0
        while spent(high) > limit and high < 1e6:
            high *= 10
        for _ in range(BISECTIONS):
            middle = (low + high) / 2
            low, high = (low, middle) if spent(middle) <= limit else (middle, high)
        return Routes.single(tradeoff(score, cost, 1.0, high))

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        return self.assign(*self.predictions(questions), willingness_to_pay)

    def sweep(self, questions: Questions) -> list[Routes]:
        score, cost = self.predictions(questions)
        return [self.assign(score, cost, budget) for budget in self.grid()]
