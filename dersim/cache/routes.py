"""Replaying fixed routes (expert sequences) through a cache as array lookups.

`next_state[S, N]` holds, for each state and expert, the state the call leads to (-1 when the
call was not built or failed). A fixed route is replayed for every question at once by repeated
fancy indexing, so all N + N^2 + ... + N^D routes of a depth-D cache are scored in milliseconds.
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

from dersim.cache.reader import Cache
from dersim.cache.schema import STATUS_OK

MAX_ROUTES = 20_000


def next_state_matrix(cache: Cache) -> np.ndarray:
    """int32 [S, N]: the successor of each state under each expert, -1 where not built."""
    table = np.full((cache.states.height, len(cache.expert_names)), -1, dtype=np.int32)
    ok = cache.transitions.filter(pl.col("status") == STATUS_OK)
    table[ok["state_id"].to_numpy(), ok["expert_id"].to_numpy()] = ok["next_state_id"].to_numpy()
    return table


def replay(route: tuple[int, ...], roots: np.ndarray, next_state: np.ndarray) -> np.ndarray:
    """Final state of `route` from each root; -1 where a call along the way is missing."""
    states = roots.astype(np.int64)
    for expert in route:
        valid = states >= 0
        states = np.where(valid, next_state[np.where(valid, states, 0), expert], -1)
    return states


def all_routes(n_experts: int, depth: int) -> list[tuple[int, ...]]:
    """Every expert sequence of length 1..depth (capped at MAX_ROUTES, shortest first)."""
    routes: list[tuple[int, ...]] = []
    for length in range(1, depth + 1):
        for route in itertools.product(range(n_experts), repeat=length):
            if len(routes) == MAX_ROUTES:
                return routes
            routes.append(route)
    return routes


def best_fixed_routes(cache: Cache, metric: str, split: str | None = None) -> list[dict]:
    """Every fixed route's mean final `metric` and mean parameter cost, best first.

    A route is scored only if it replays for every question of the split (complete caches)."""
    questions = cache.questions if split is None else cache.questions.filter(pl.col("split") == split)
    roots = questions["root_state_id"].to_numpy()
    scores = cache.states[metric].to_numpy()
    next_state = next_state_matrix(cache)
    params = np.array([e.get("params_b") or 0.0 for e in cache.manifest["experts"]])
    results = []
    for route in all_routes(next_state.shape[1], cache.depth):
        final = replay(route, roots, next_state)
        if len(final) and (final >= 0).all():
            results.append({"route": [cache.expert_names[e] for e in route], "score": float(scores[final].mean()),
                            "params_b": float(params[list(route)].sum())})
    return sorted(results, key=lambda r: (-r["score"], r["params_b"], len(r["route"])))


def expert_scores_by_step(cache: Cache, metrics: list[str]) -> dict[str, list[list[float | None]]]:
    """metric -> [N][D]: each expert's mean score when it makes call d (1..D), over every question
    and every route of d - 1 earlier calls (so step 1 is its own first answer, and later steps show
    what the Knowledge Transfer Prompt does with the other experts' answers). None where nothing
    replays. The routes are replayed once for all metrics."""
    roots = cache.questions["root_state_id"].to_numpy()
    scores = {m: cache.states[m].to_numpy() for m in metrics}
    next_state = next_state_matrix(cache)
    n_experts = next_state.shape[1]
    means: dict[str, list[list[float | None]]] = {m: [[] for _ in range(n_experts)] for m in metrics}
    for step in range(1, cache.depth + 1):
        prefixes = list(itertools.product(range(n_experts), repeat=step - 1))
        starts = np.concatenate([replay(prefix, roots, next_state) for prefix in prefixes])
        for expert in range(n_experts):
            final = replay((expert,), starts, next_state)
            final = final[final >= 0]
            for metric in metrics:
                means[metric][expert].append(float(scores[metric][final].mean()) if len(final) else None)
    return means
