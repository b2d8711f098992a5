"""`mf`: RouteLLM's matrix-factorisation router (arXiv 2406.18665), for N experts.

RouteLLM scores a (question, model) pair by delta(q, m) = w^T (v_m * (W x_q)) and trains
sigma(delta(q, a) - delta(q, b)) on battles "a beats b". With w folded into the expert vectors this
is a rank-k bilinear model delta(q, e) = u_e^T (W x_q) + bias_e, trained here with Adam on the
logistic loss of every train battle that has a winner (ties carry no preference) plus an L2 penalty.
The route takes the expert's win rate against the others as its quality (`pairwise.win_rate`).
"""

from __future__ import annotations

import numpy as np

from dersim.routers.base import QualityRouter, Questions, TrainData
from dersim.routers.pairwise import expert_pairs, outcomes, win_rate

STEPS = 300
LEARNING_RATE = 0.02


class MFRouter(QualityRouter):
    """RouteLLM's matrix factorisation: a rank-k bilinear model of pairwise wins.

    Parameters
    ----------
    rank : int, default=16
        Rank k of the question projection W and the expert vectors.
    l2 : float, default=1e-3
        L2 penalty on every parameter.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "mf"
    stochastic = True
    search = {"rank": (8, 32), "l2": (1e-4, 1e-2)}

    def __init__(self, rank: int = 16, l2: float = 1e-3, seed: int = 0) -> None:
        super().__init__(seed)
        self.rank, self.l2 = rank, l2

    def learn(self, train: TrainData) -> None:
        x = np.asarray(train.questions.embedding, dtype=np.float64)
        n, d = train.score.shape[1], x.shape[1]
        pairs = expert_pairs(n)
        won = outcomes(train.score)  # [Q, M]
        q_index, m_index = np.nonzero(won != 0.5)
        labels = won[q_index, m_index]
        sign = np.zeros((len(pairs), n))
        sign[np.arange(len(pairs)), pairs[:, 0]], sign[np.arange(len(pairs)), pairs[:, 1]] = (
            1.0,
            -1.0,
        )
        battle = sign[m_index]  # [P, N]: +1 for the pair's first expert, -1 for the second
        rng = np.random.default_rng(self.seed)
        params = {
            "W": rng.normal(0, 1 / np.sqrt(d), (self.rank, d)),
            "u": rng.normal(0, 0.1, (n, self.rank)),
            "bias": np.zeros(n),
        }
        moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
        for step in range(1, STEPS + 1 if len(labels) else 1):
            hidden = (x @ params["W"].T)[q_index]  # [P, k]: the battle's question, projected
            toward = battle @ params["u"]  # [P, k]: u_a - u_b
            g = (
                1 / (1 + np.exp(-(np.einsum("pk,pk->p", toward, hidden) + battle @ params["bias"])))
                - labels
            ) / len(labels)  # d loss / d logit
            per_question = np.zeros((len(x), self.rank))
            np.add.at(per_question, q_index, g[:, None] * toward)
            grads = {
                "u": battle.T @ (g[:, None] * hidden) + self.l2 * params["u"],
                "W": per_question.T @ x + self.l2 * params["W"],
                "bias": battle.T @ g,
            }
            for key, grad in grads.items():
                m, v = moments[key]
                m[:] = 0.9 * m + 0.1 * grad
                v[:] = 0.999 * v + 0.001 * grad**2
                params[key] -= (
                    LEARNING_RATE * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
                )
        self.params_ = params

    def quality(self, questions: Questions) -> np.ndarray:
        hidden = np.asarray(questions.embedding, np.float64) @ self.params_["W"].T
        return win_rate(hidden @ self.params_["u"].T + self.params_["bias"])
