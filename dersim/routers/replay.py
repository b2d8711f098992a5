"""Routes replayed through the cache: every router is judged on the same cached answers.

A route with knowledge transfer is a DER route and replays through `next_state` call by call
(`dersim.evaluation.baselines.run_routes`). Without transfer every call answers the question from
scratch, so call e's answer is the root's successor `next_state[root, e]` and costs `cost[root, e]`
(DESIGN.md: the "without KTP" reading of the same cache); the final answer is the last call's or
the one the router kept. A route without calls ends at the root (no answer, score 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dersim.evaluation.baselines import RouteTables, run_routes
from dersim.routers.base import RouterError, Routes, World


@dataclass(frozen=True)
class Outcome:
    """Per question: the final answer's state, the calls made and their summed cost (raw unit)."""

    final_state: np.ndarray  # int64 [Q]
    calls: np.ndarray  # int64 [Q]
    cost: np.ndarray  # float64 [Q]


def replay(routes: Routes, roots: np.ndarray, world: World, score: np.ndarray) -> Outcome:
    """The outcome of `routes` from `roots`; refuses a route the cache cannot replay."""
    calls = np.asarray(routes.calls, dtype=np.int64)
    if calls.ndim != 2 or calls.shape[0] != len(roots) or calls.shape[1] == 0:
        raise RouterError(f"routes of shape {calls.shape} for {len(roots)} questions")
    made = calls >= 0
    if (made[:, 1:] & ~made[:, :-1]).any():
        raise RouterError("a route has a gap before its last call")
    if calls.max() >= world.n_experts:
        raise RouterError(f"a route calls expert {calls.max()} of {world.n_experts}")
    if routes.transfer:
        if routes.keep is not None:
            raise RouterError("a route with knowledge transfer keeps its last answer")
        outcome = run_routes(calls, roots, RouteTables(world.next_state, score, world.cost))
        if (outcome.final_state < 0).any():
            raise RouterError("a route goes past the cache's built depth (or through a failed call)")
        return Outcome(outcome.final_state, outcome.calls, outcome.cost)
    experts = np.maximum(calls, 0)
    answers = world.next_state[roots[:, None], experts]  # [Q, L], every call from the root
    cost = np.where(made, world.cost[roots[:, None], experts], 0.0).sum(axis=1)
    n_calls = made.sum(axis=1)
    keep = n_calls - 1 if routes.keep is None else np.asarray(routes.keep, dtype=np.int64)
    if ((keep < -1) | (keep >= n_calls) | ((keep == -1) & (n_calls > 0))).any():
        raise RouterError("a route keeps the answer of a call it did not make")
    final = np.where(n_calls > 0, answers[np.arange(len(roots)), np.maximum(keep, 0)], roots)  # no call: no answer
    if (final < 0).any():
        raise RouterError("a route calls an expert whose first answer is not in the cache (failed call)")
    return Outcome(final.astype(np.int64), n_calls.astype(np.int64), cost.astype(np.float64))
