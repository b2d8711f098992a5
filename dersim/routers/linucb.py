"""`linucb`: MetaLLM (arXiv 2407.10834): a linear contextual bandit whose arms are the experts.

The context is the question's embedding reduced to `dim` principal components (fitted on the train
questions) plus a bias; the reward of calling expert e is its score - lambda * cost / cost_scale, so
each cost weight lambda of the sweep trains its own bandit (all at once, vectorised). Training
plays the train questions in a seeded random order (two passes) with LinUCB exploration
(upper confidence bound with width alpha); only the chosen arm's reward is observed. Routing is
greedy: the arm with the best predicted reward.
"""

from __future__ import annotations

from typing import Self

import numpy as np
from sklearn.decomposition import PCA

from dersim.routers.base import LAMBDAS, Questions, Router, Routes, TrainData

PASSES = 2
DIM = 16


class LinUCBRouter(Router):
    """MetaLLM: a LinUCB contextual bandit over the experts, one per cost weight.

    Parameters
    ----------
    alpha : float, default=0.5
        Width of the upper confidence bound (exploration while training).
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "linucb"
    stochastic = True
    search = {"alpha": (0.1, 0.5, 2.0)}

    def __init__(self, alpha: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed)
        self.alpha = alpha

    def grid(self) -> np.ndarray:
        return LAMBDAS[::2]

    def context(self, embedding: np.ndarray) -> np.ndarray:
        reduced = self.pca_.transform(np.asarray(embedding, np.float64))
        return np.concatenate([reduced, np.ones((len(reduced), 1))], axis=1)

    def fit(self, train: TrainData) -> Self:
        embedding = np.asarray(train.questions.embedding, np.float64)
        self.pca_ = PCA(n_components=min(DIM, *embedding.shape), random_state=0).fit(embedding)
        x = self.context(embedding)
        lambdas, (n_questions, n) = self.grid(), train.score.shape
        reward = (
            train.score[None] - lambdas[:, None, None] * train.cost[None] / train.cost_scale
        )  # [L, Q, N]
        d, n_l = x.shape[1], len(lambdas)
        inverse = np.tile(np.eye(d), (n_l, n, 1, 1))  # [L, N, d, d]: A^-1 per bandit and arm
        b = np.zeros((n_l, n, d))
        rng = np.random.default_rng(self.seed)
        lanes = np.arange(n_l)
        for question in np.concatenate([rng.permutation(n_questions) for _ in range(PASSES)]):
            context = x[question]
            theta = np.einsum("lnij,lnj->lni", inverse, b)
            spread = np.einsum("i,lnij,j->ln", context, inverse, context)
            arm = (theta @ context + self.alpha * np.sqrt(np.maximum(spread, 0))).argmax(
                axis=1
            )  # [L]
            chosen = inverse[lanes, arm]  # [L, d, d]
            projected = chosen @ context  # [L, d]
            inverse[lanes, arm] = (
                chosen
                - projected[:, :, None]
                * projected[:, None, :]
                / (1 + projected @ context)[:, None, None]
            )
            b[lanes, arm] += reward[lanes, question, arm][:, None] * context
        self.theta_ = np.einsum("lnij,lnj->lni", inverse, b)
        return self

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        lane = int(np.flatnonzero(self.grid() == willingness_to_pay)[0])
        return Routes.single(
            (self.context(questions.embedding) @ self.theta_[lane].T).argmax(axis=1)
        )
