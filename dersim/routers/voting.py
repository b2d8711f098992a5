"""`voting`: agreement among several experts' first answers (sampling-and-voting, Agent-Forest,
arXiv 2402.05120, with an embedding for the vote): every chosen expert answers the question, and
the answer with the highest mean cosine similarity to the others is kept (ties: the expert better
on train). The sweep votes among the m best experts on train, m = 3 .. N (all N when N < 3).
"""

from __future__ import annotations

from typing import Self

import numpy as np

from dersim.routers.base import Questions, Router, Routes, TrainData


class VotingRouter(Router):
    """Agreement voting: the m best experts on train answer and the most agreed-with answer (mean
    cosine to the others) is kept; the sweep runs m = 3 .. N.

    Parameters
    ----------
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "voting"

    def fit(self, train: TrainData) -> Self:
        self.ranked_ = np.argsort(-train.expert_score, kind="stable")
        return self

    def grid(self) -> np.ndarray:
        n = len(self.ranked_)
        return np.arange(min(3, n), n + 1, dtype=np.float64)

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        experts = self.ranked_[: int(willingness_to_pay)]
        answers = questions.world.next_state[questions.roots[:, None], experts[None, :]]  # [Q, m]
        embedding = questions.world.embedding[answers].astype(np.float64)  # [Q, m, d]
        similarity = np.einsum("qid,qjd->qij", embedding, embedding)
        agreement = similarity.sum(axis=2) - np.einsum("qii->qi", similarity)
        calls = np.broadcast_to(experts, answers.shape).astype(np.int64)
        return Routes(calls, transfer=False, keep=agreement.argmax(axis=1))
