"""Optional PCA of the state embeddings: the observation's embedding part shrunk to k dimensions.

A policy's first layer costs d x hidden multiply-adds per sample, and with a 384-d sentence
embedding that layer is most of PPO's arithmetic. Projecting onto the top k principal components
(k = 32 keeps the directions along which the cache's answers differ most) cuts it by d / k.
The components are fitted on the train split's states only, so no test answer shapes the
observation, and both environments apply the same projection to every state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dersim.errors import DersimError


def project_states(
    embedding: np.ndarray,
    state_questions: np.ndarray,
    train_questions: np.ndarray,
    k: int,
    where: Path,
) -> np.ndarray:
    """`embedding` [S, d] projected onto the top `k` principal components of the train split's
    states (those whose question id, in `state_questions`, is one of `train_questions`)."""
    return principal_projection(embedding, np.isin(state_questions, train_questions), k, where)


@dataclass(frozen=True)
class Projection:
    """The fitted projection: the fit rows' float64 mean and the top k components [k, d]."""

    mean: np.ndarray
    components: np.ndarray

    def apply(self, embedding: np.ndarray) -> np.ndarray:
        """float32 [n, k] for rows [n, d] (float64 arithmetic, so every caller gets the same
        bytes)."""
        return ((np.asarray(embedding).astype(np.float64) - self.mean) @ self.components.T).astype(
            np.float32
        )


def fit_projection(embedding: np.ndarray, fit_rows: np.ndarray, k: int, where: Path) -> Projection:
    """The top `k` principal components of the rows of `embedding` [S, d] selected by the boolean
    mask `fit_rows` (centred on their mean).

    SVD signs are arbitrary, so each component is flipped to make its largest loading positive:
    the same cache always gives the same observation."""
    dim = embedding.shape[1]
    if not 1 <= k <= dim:
        raise DersimError(
            f"{where}: --embedding-dim {k} must be between 1 and the cache's embedding size {dim}"
        )
    fit = embedding[fit_rows].astype(np.float64)
    if fit.shape[0] < k:
        raise DersimError(
            f"{where}: --embedding-dim {k} needs at least {k} train states (the cache has "
            f"{fit.shape[0]})"
        )
    mean = fit.mean(axis=0)
    _, _, components = np.linalg.svd(fit - mean, full_matrices=False)
    components = components[:k]
    largest = np.abs(components).argmax(axis=1)
    components *= np.sign(components[np.arange(k), largest])[:, None]
    return Projection(mean, components)


def principal_projection(
    embedding: np.ndarray, fit_rows: np.ndarray, k: int, where: Path
) -> np.ndarray:
    """Every row of `embedding` [S, d] projected onto the top `k` principal components of the rows
    selected by `fit_rows` -> float32 [S, k]."""
    return fit_projection(embedding, fit_rows, k, where).apply(embedding)
