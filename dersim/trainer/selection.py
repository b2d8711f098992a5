"""Choosing on val: the one rule by which a trained policy or setting is picked for deployment.

The best mean score wins, the lower cost breaks ties, then the earlier candidate. Every caller
(the trainer's run summary, `dersim eval`, the routers' DER curves, `dersim reproduce`, the live
router) passes val figures, or train ones when a run has no val split, never the evaluation
split's; and only deployable candidates (those that do not read the reference) are chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from dersim.env.tables import EnvSpec, reads_reference

Key = TypeVar("Key")


def best_candidate(
    candidates: Sequence[Key],
    score: Sequence[float] | np.ndarray,
    cost: Sequence[float] | np.ndarray,
) -> Key | None:
    """The candidate with the best score, the lower cost breaking ties, then the earlier one; None
    when there is none. `score[i]` and `cost[i]` belong to `candidates[i]`."""
    best = min(
        range(len(candidates)), key=lambda i: (-float(score[i]), float(cost[i]), i), default=None
    )
    return None if best is None else candidates[best]


def choose_policy(
    policies: list[dict[str, Any]], score: np.ndarray, cost: np.ndarray, spec: EnvSpec | None = None
) -> int | None:
    """The index of the deployable policy chosen by `best_candidate` (`score[i]`, `cost[i]` of
    policy i); None when every policy reads the reference (the oracle terminator, or under `spec`
    pairs picked by the reference)."""
    deployable = [
        i for i, p in enumerate(policies) if not reads_reference(spec or EnvSpec(), p["terminator"])
    ]
    return best_candidate(deployable, [score[i] for i in deployable], [cost[i] for i in deployable])
