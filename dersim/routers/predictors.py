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
    """Predicts each expert's score as the mean over the k nearest train questions (cosine).

    Parameters
    ----------
    k : int, default=10
        Neighbours averaged (at most the number of train questions); chosen on val from `search`.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "knn"
    search = {"k": (5, 10, 20, 40)}

    def __init__(self, k: int = 10, seed: int = 0) -> None:
        super().__init__(seed)
        self.k = k

    def model(self, n_train: int) -> KNeighborsRegressor:
        return KNeighborsRegressor(n_neighbors=min(self.k, n_train))


class MLPRouter(ScorePredictor):
    """Predicts each expert's score with a one-hidden-layer perceptron on the embedding.

    Parameters
    ----------
    hidden : int, default=64
        Width of the hidden layer.
    l2 : float, default=1e-4
        L2 penalty on the weights (scikit-learn's `alpha`).
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

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
    """Predicts each expert's score with ridge regression on the embedding.

    Parameters
    ----------
    l2 : float, default=1.0
        Ridge strength (scikit-learn's `alpha`).
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "linear"
    search = {"l2": (0.1, 1.0, 10.0)}

    def __init__(self, l2: float = 1.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.l2 = l2

    def model(self, n_train: int) -> Ridge:
        return Ridge(alpha=self.l2)
