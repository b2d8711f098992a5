"""Reference rows: `oracle` (reads the reference) and `best-single` (the best expert on train).

`oracle` knows every expert's score on every question and, for each cost weight lambda, sends each
question to argmax_e score - lambda * cost / cost_scale: the upper bound of single-call routing in
the cache. It reads the reference, so it is marked `uses_reference` and never deployable.
`best-single` sends every question to the strong expert (the best single expert on train): the
point every router is measured against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import numpy as np

from dersim.routers.base import (
    LAMBDAS,
    Questions,
    Router,
    RouterOptions,
    Routes,
    TrainData,
    tradeoff,
)
from dersim.routers.random_routing import weak_and_strong

if TYPE_CHECKING:
    from dersim.routers.data import RouterData


class OracleRouter(Router):
    """Per question and cost weight, the expert with the best reference score - lambda * cost:
    the upper bound of single-call routing (reads the reference).

    Parameters
    ----------
    reference : ndarray of shape (S,)
        Reference score of every state.
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "oracle"
    uses_reference = True

    def __init__(self, reference: np.ndarray, seed: int = 0) -> None:
        super().__init__(seed)
        self.reference = reference

    @classmethod
    def fixed_settings(cls, data: RouterData, options: RouterOptions) -> dict[str, Any]:
        """The reference scores it routes by."""
        return {"reference": data.score}

    def fit(self, train: TrainData) -> Self:
        self.cost_scale_ = train.cost_scale
        return self

    def grid(self) -> np.ndarray:
        return LAMBDAS

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        world, roots = questions.world, questions.roots
        score = self.reference[world.next_state[roots]]  # [Q, N]
        return Routes.single(
            tradeoff(score, world.cost[roots], self.cost_scale_, willingness_to_pay)
        )


class BestSingleRouter(Router):
    """Every question goes to the strong expert (the best single expert on train).

    Parameters
    ----------
    seed : int, default=0
        Seed of the router's random choices (same seed, same routes; a deterministic router
        has none).
    """

    name = "best-single"

    def fit(self, train: TrainData) -> Self:
        self.strong_ = weak_and_strong(train)[1]
        return self

    def grid(self) -> np.ndarray:
        return np.zeros(1)

    def route(self, questions: Questions, willingness_to_pay: float) -> Routes:
        return Routes.single(np.full(len(questions), self.strong_))
