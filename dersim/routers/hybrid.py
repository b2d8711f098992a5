"""`hybrid`: Hybrid LLM (arXiv 2404.14618): a classifier predicts whether the small expert's answer
is as good as the large one's (within a relaxation t), and questions whose probability reaches the
threshold go to the small expert, the others to the large one.

Small = the cheapest expert on train, large = the best single expert on train. The label of a train
question is score_small >= score_large - t (the paper's probabilistic relaxation with t > 0); the
classifier is a logistic regression on the question's embedding. The sweep runs the threshold
from 0 (everything to the small expert) to above 1 (everything to the large one).
"""

from __future__ import annotations

from typing import Self

import numpy as np
from sklearn.linear_model import LogisticRegression

from dersim.routers.base import Questions, Router, Routes, TrainData
from dersim.routers.random_routing import weak_and_strong


class HybridRouter(Router):
    """Hybrid LLM: a classifier sends a question to the small expert when it predicts the small
    answer is as good as the large one's (within `relax`).

    Parameters
    ----------
    relax : float, default=0.0
        The relaxation t of the label score_small >= score_large - t.
    c : float, default=1.0
        Inverse regularisation strength of the logistic regression (scikit-learn's `C`).
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "hybrid"
    search = {"relax": (0.0, 0.1), "c": (0.1, 1.0, 10.0)}

    def __init__(self, relax: float = 0.0, c: float = 1.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.relax, self.c = relax, c

    def fit(self, train: TrainData) -> Self:
        self.small_, self.large_ = weak_and_strong(train)
        labels = train.score[:, self.small_] >= train.score[:, self.large_] - self.relax
        self.constant_ = float(labels.mean()) if labels.all() or not labels.any() else None
        if self.constant_ is None:
            self.model_ = LogisticRegression(C=self.c, max_iter=2000).fit(
                train.questions.embedding, labels
            )
        return self

    def grid(self) -> np.ndarray:
        return np.append(np.linspace(0.0, 1.0, 21), 1.01)

    def probability(self, questions: Questions) -> np.ndarray:
        if self.constant_ is not None:
            return np.full(len(questions), self.constant_)
        return self.model_.predict_proba(questions.embedding)[:, 1]

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        return self.routes(self.probability(questions), willingness_to_pay)

    def routes(self, probability: np.ndarray, threshold: float) -> Routes:
        return Routes.single(np.where(probability >= threshold, self.small_, self.large_))

    def sweep(self, questions: Questions) -> list[Routes]:
        probability = self.probability(questions)
        return [self.routes(probability, t) for t in self.grid()]
