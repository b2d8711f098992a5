"""Pairwise comparisons between experts, for the preference routers (mf, sw-ranking, elo).

RouteLLM's routers learn from battles between two models. On a cache every train question holds a
battle between every pair of experts: expert a beats b when its first answer scores higher (a tie
is half a win each). A learned strength per expert becomes a quality on the score-like [0, 1]
scale the cost trade-off needs: the expected win rate against the other experts.
"""

from __future__ import annotations

import numpy as np


def expert_pairs(n_experts: int) -> np.ndarray:
    """int [M, 2]: every pair (a, b) with a < b."""
    a, b = np.triu_indices(n_experts, k=1)
    return np.stack([a, b], axis=1)


def outcomes(score: np.ndarray) -> np.ndarray:
    """float [Q, M]: 1 where the pair's first expert scored higher, 0 lower, 0.5 on a tie."""
    pairs = expert_pairs(score.shape[1])
    diff = score[:, pairs[:, 0]] - score[:, pairs[:, 1]]
    return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))


def win_rate(strength: np.ndarray) -> np.ndarray:
    """[..., N]: each expert's mean Bradley-Terry probability of beating each other expert, from
    log-strengths `strength` [..., N]."""
    n = strength.shape[-1]
    diff = strength[..., :, None] - strength[..., None, :]
    p = 1 / (1 + np.exp(-diff))
    return (p.sum(axis=-1) - 0.5) / max(n - 1, 1)
