"""The embedding part of a live observation: a raw state embedding as the run's env observed it.

Without `--embedding-dim` the env observes the cached embedding as is. With it, the env observes
the projection onto the top k principal components of the run's train states
(`dersim.env.projection`, fitted when the tables load and not kept). The same fit is made here
once, from the same rows in the same order, so a cached state's raw embedding maps to exactly its
row of the env's table (a test checks every state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dersim.cache.check import read_checked
from dersim.cache.files import embedding_matrix
from dersim.cache.schema import QUESTIONS, STATES
from dersim.env.projection import Projection, fit_projection
from dersim.env.tables import EnvSpec, question_assignment


def raw_state_embeddings(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """float32 [S, d] cached state embeddings (state id order) and each state's question id."""
    states = read_checked(
        cache, {STATES: ["question_id", "embedding"]}, verify_hashes=False, metrics=[]
    )[1][STATES]
    return embedding_matrix(states), np.asarray(
        states["question_id"].to_numpy(zero_copy_only=False)
    )


class ObservedEmbedding:
    """Raw embeddings -> the run's observed embeddings (identity, or the run's PCA projection)."""

    def __init__(self, cache: Path, spec: EnvSpec) -> None:
        self.projection: Projection | None = None
        if spec.embedding_dim is None:
            return
        embedding, state_questions = raw_state_embeddings(cache)
        questions = read_checked(cache, {QUESTIONS: ["question_id", "split"]}, verify_hashes=False)[
            1
        ][QUESTIONS]
        ids = np.asarray(questions["question_id"].to_numpy(zero_copy_only=False))
        assigned = question_assignment(
            np.asarray(questions["split"].to_numpy(zero_copy_only=False)), spec
        )
        self.projection = fit_projection(
            embedding, np.isin(state_questions, ids[assigned == "train"]), spec.embedding_dim, cache
        )

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """float32 [n, k] (or [n, d] without a projection) for raw rows [n, d]."""
        if self.projection is None:
            return np.asarray(raw, dtype=np.float32)
        return self.projection.apply(raw)
