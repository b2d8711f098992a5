"""RouterBench's predictive routers: a scikit-learn regressor predicts every expert's score from the
question's embedding; the route is argmax_e predicted score - lambda * cost_e / cost_scale.

`knn` (k nearest train questions, cosine on unit embeddings), `mlp` (a small multi-layer
perceptron) and `linear` (ridge regression): one multi-output model over the N experts each.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor

from dersim.routers.base import QualityRouter, Questions, TrainData


class ScorePredictor(QualityRouter):
    """Fits `model()` on (root embedding -> each expert's first-answer score)."""

    def model(self, n_train: int):
        raise NotImplementedError

    def learn(self, train: TrainData) -> None:
        self.model_ = self.model(len(train.questions))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(train.questions.embedding, train.score)

    def quality(self, questions: Questions) -> np.ndarray:
        return np.asarray(self.model_.predict(questions.embedding)).reshape(len(questions), -1)


class KNNRouter(ScorePredictor):
    name = "knn"
    search = {"k": (5, 10, 20, 40)}

    def __init__(self, k: int = 10, seed: int = 0) -> None:
        super().__init__(seed)
        self.k = k

    def model(self, n_train: int) -> KNeighborsRegressor:
        return KNeighborsRegressor(n_neighbors=min(self.k, n_train))


class MLPRouter(ScorePredictor):
    name = "mlp"
    stochastic = True
    search = {"hidden": (32, 128), "l2": (1e-4, 1e-2)}

    def __init__(self, hidden: int = 64, l2: float = 1e-4, seed: int = 0) -> None:
        super().__init__(seed)
        self.hidden, self.l2 = hidden, l2

    def model(self, n_train: int) -> MLPRegressor:
        return MLPRegressor(
            hidden_layer_sizes=(self.hidden,), alpha=self.l2, max_iter=400, random_state=self.seed
        )


class LinearRouter(ScorePredictor):
    name = "linear"
    search = {"l2": (0.1, 1.0, 10.0)}

    def __init__(self, l2: float = 1.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.l2 = l2

    def model(self, n_train: int) -> Ridge:
        return Ridge(alpha=self.l2)
