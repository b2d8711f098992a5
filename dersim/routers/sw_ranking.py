"""`sw-ranking`: RouteLLM's similarity-weighted ranking router (arXiv 2406.18665), for N experts.

For each question, every train battle counts with weight gamma^(1 + cos(q, q_i)) (the cosine of
the two questions' unit embeddings), and a Bradley-Terry model of the N experts is fitted to the
weighted battles by Hunter's minorise-maximise iterations, with a small tie prior between every
pair so that strengths stay finite. The route takes each expert's win rate against the others as
its quality.
"""

from __future__ import annotations

import numpy as np

from dersim.routers.base import QualityRouter, Questions, TrainData
from dersim.routers.pairwise import expert_pairs, outcomes, win_rate

ITERATIONS = 60
TIE_PRIOR = 0.01  # pseudo-battles (half a win each way) per pair, against weights that sum to 1


class SWRankingRouter(QualityRouter):
    """RouteLLM's similarity-weighted Bradley-Terry ranking of the experts per question.

    Parameters
    ----------
    gamma : float, default=10.0
        Base of the battle weight gamma^(1 + cos(q, q_i)): larger weighs similar questions more.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "sw-ranking"
    search = {"gamma": (10.0, 100.0, 1000.0)}

    def __init__(self, gamma: float = 10.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.gamma = gamma

    def learn(self, train: TrainData) -> None:
        n = train.score.shape[1]
        pairs = expert_pairs(n)
        won = outcomes(train.score)  # [Q, M]
        wins = np.zeros((len(won), n, n))
        wins[:, pairs[:, 0], pairs[:, 1]] = won
        wins[:, pairs[:, 1], pairs[:, 0]] = 1 - won
        self.wins_ = wins.reshape(len(won), n * n)
        self.train_embedding_ = np.asarray(train.questions.embedding, np.float64)

    def quality(self, questions: Questions) -> np.ndarray:
        n = int(np.sqrt(self.wins_.shape[1]))
        similarity = np.asarray(questions.embedding, np.float64) @ self.train_embedding_.T  # [Q, T]
        weights = np.log(self.gamma) * (1 + similarity)
        weights = np.exp(weights - weights.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        won = (weights @ self.wins_).reshape(len(questions), n, n) + TIE_PRIOR / 2 * (1 - np.eye(n))
        games = won + won.transpose(0, 2, 1)
        strength = np.ones((len(questions), n))
        for _ in range(ITERATIONS):
            denominator = (games / (strength[:, :, None] + strength[:, None, :])).sum(axis=2)
            strength = won.sum(axis=2) / denominator
            strength /= np.exp(np.log(strength).mean(axis=1, keepdims=True))
        return win_rate(np.log(strength))
