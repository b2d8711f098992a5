"""`elo`: Eagle (arXiv 2409.15518): a global ELO rating of the experts from every train battle, plus
a local ELO for each question from the battles on its k nearest train questions, mixed as P * global
+ (1 - P) * local.

The global rating plays the train battles (every pair of experts on every train question) once,
in a seeded random order. The local rating starts from the global one and replays the k nearest
questions' battles, farthest first, so the nearest weigh most. A rating becomes a quality through
the ELO win expectation against the other experts.
"""

from __future__ import annotations

import numpy as np

from dersim.routers.base import QualityRouter, Questions, TrainData
from dersim.routers.pairwise import expert_pairs, outcomes, win_rate

K_FACTOR = 32.0
SCALE = 400.0  # ELO points per factor 10 in odds


def expected(ra: np.ndarray | float, rb: np.ndarray | float) -> np.ndarray | float:
    return 1 / (1 + 10 ** ((rb - ra) / SCALE))


class EloRouter(QualityRouter):
    """Eagle: a global ELO rating of the experts mixed with a local one per question.

    Parameters
    ----------
    k : int, default=20
        Nearest train questions whose battles the local rating replays.
    global_weight : float, default=0.5
        P in P * global + (1 - P) * local.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "elo"
    stochastic = True
    search = {"k": (10, 30), "global_weight": (0.25, 0.5, 0.75)}

    def __init__(self, k: int = 20, global_weight: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed)
        self.k, self.global_weight = k, global_weight

    def learn(self, train: TrainData) -> None:
        n = train.score.shape[1]
        self.pairs_ = expert_pairs(n)
        self.outcomes_ = outcomes(train.score)  # [T, M]
        self.train_embedding_ = np.asarray(train.questions.embedding, np.float64)
        rating = np.zeros(n)
        rng = np.random.default_rng(self.seed)
        for question in rng.permutation(len(self.outcomes_)):
            for m in rng.permutation(len(self.pairs_)):
                a, b = self.pairs_[m]
                delta = K_FACTOR * (self.outcomes_[question, m] - expected(rating[a], rating[b]))
                rating[a] += delta
                rating[b] -= delta
        self.global_ = rating

    def quality(self, questions: Questions) -> np.ndarray:
        similarity = np.asarray(questions.embedding, np.float64) @ self.train_embedding_.T
        k = min(self.k, similarity.shape[1])
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        local = np.tile(self.global_, (len(questions), 1))
        for rank in range(k - 1, -1, -1):
            played = self.outcomes_[nearest[:, rank]]  # [Q, M]
            for m, (a, b) in enumerate(self.pairs_):
                delta = K_FACTOR * (played[:, m] - expected(local[:, a], local[:, b]))
                local[:, a] += delta
                local[:, b] -= delta
        rating = self.global_weight * self.global_ + (1 - self.global_weight) * local
        return win_rate(rating * np.log(10) / SCALE)
