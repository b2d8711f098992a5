"""Replaying routes (expert sequences) through a cache as array lookups: the one route replay.

`next_state[S, N]` holds, for each state and expert, the state the call leads to (-1 when the
call was not built or failed). Routes are replayed for every question (and every policy or seed)
at once by repeated fancy indexing, so all N + N^2 + ... + N^D routes of a depth-D cache are
scored in milliseconds. Evaluation's baselines, the routers, DER curves, `dersim reproduce` and
`route --check` all replay here and share one `Outcome`.

A route with knowledge transfer (a DER route) walks `next_state` call by call (`replay`); without
transfer every call answers the question from scratch, so call e's answer is the root's successor
`next_state[root, e]` at `cost[root, e]` (`replay_from_root`, DESIGN.md's "without KTP" reading of
the same cache).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import polars as pl

from dersim.cache.reader import Cache
from dersim.cache.schema import STATUS_OK, not_replayable
from dersim.errors import DersimError

MAX_ROUTES = 20_000


@dataclass(frozen=True)
class RouteTables:
    """What replaying needs: the successor table, each call's cost (None: every call is free) and
    the score that drives stopping at p0 (None: never stops early)."""

    next_state: np.ndarray  # int32 [S, N]
    cost: np.ndarray | None = None  # float32 [S, N], raw unit
    score: np.ndarray | None = None  # float32 [S]


@dataclass(frozen=True)
class Outcome:
    """Per question (the last axis; leading axes for policies or seeds): the final answer's state
    (-1 where a call along the route was not in the cache), the calls made and their summed cost
    (raw unit). `params` and `seconds` are the same routes costed in billions of parameters and in
    cached seconds, where a caller costs them so (NaN where the cache does not know). `path` is the
    state after each call, root first ([..., Q, L + 1], the last state repeated after the end),
    when the replay was asked for it."""

    final_state: np.ndarray  # int64 [..., Q]
    calls: np.ndarray  # int64 [..., Q]
    cost: np.ndarray  # float64 [..., Q]
    params: np.ndarray | None = None
    seconds: np.ndarray | None = None
    path: np.ndarray | None = None


def next_state_matrix(cache: Cache) -> np.ndarray:
    """int32 [S, N]: the successor of each state under each expert, -1 where not built.

    Raises:
        DersimError: a sampled cache, whose calls have several children.
    """
    if reason := not_replayable(cache.path, cache.manifest):
        raise DersimError(reason)
    table = np.full((cache.states.height, len(cache.expert_names)), -1, dtype=np.int32)
    ok = cache.transitions.filter(pl.col("status") == STATUS_OK)
    table[ok["state_id"].to_numpy(), ok["expert_id"].to_numpy()] = ok["next_state_id"].to_numpy()
    return table


def replay(
    routes: np.ndarray,
    roots: np.ndarray,
    tables: RouteTables,
    p0: float = 0.0,
    stop_at_p0: bool = False,
    with_path: bool = False,
) -> Outcome:
    """Replay routes [..., Q, L] (`routes[..., q, :]` from `roots[q]`, -1 = no more calls) with
    knowledge transfer, stopping once the answer's score reaches p0 if asked (that reads the
    reference). A call that is not in the cache ends the route at state -1."""
    routes = np.asarray(routes, dtype=np.int64)
    state = np.broadcast_to(roots.astype(np.int64), routes.shape[:-1]).copy()
    calls = np.zeros(state.shape, dtype=np.int64)
    cost = np.zeros(state.shape, dtype=np.float64)
    active = np.ones(state.shape, dtype=bool)
    path = [state]
    for step in range(routes.shape[-1]):
        expert = np.maximum(routes[..., step], 0)
        active &= (routes[..., step] >= 0) & (state >= 0)
        if not active.any():
            path += [state] * (routes.shape[-1] - step)
            break
        here = np.maximum(state, 0)
        if tables.cost is not None:
            cost += np.where(active, tables.cost[here, expert], 0.0)
        state = np.where(active, tables.next_state[here, expert], state)
        calls += active
        path.append(state)
        if stop_at_p0:
            active &= tables.score[np.maximum(state, 0)] < np.float32(p0)
    return Outcome(state, calls, cost, path=np.stack(path, axis=-1) if with_path else None)


def replay_from_root(
    routes: np.ndarray, roots: np.ndarray, tables: RouteTables, keep: np.ndarray | None = None
) -> Outcome:
    """Replay routes [Q, L] without knowledge transfer: every call answers the question from its
    root, and the final answer is call `keep[q]`'s (default: the last call's); a route without calls
    ends at the root (no answer). -1 where a kept call is not in the cache."""
    routes = np.asarray(routes, dtype=np.int64)
    made = routes >= 0
    experts = np.maximum(routes, 0)
    answers = tables.next_state[roots[:, None], experts]  # [Q, L]
    cost = (
        np.zeros(len(roots))
        if tables.cost is None
        else np.where(made, tables.cost[roots[:, None], experts], 0.0).sum(axis=1)
    )
    n_calls = made.sum(axis=1)
    keep = n_calls - 1 if keep is None else np.asarray(keep, dtype=np.int64)
    final = np.where(n_calls > 0, answers[np.arange(len(roots)), np.maximum(keep, 0)], roots)
    return Outcome(final.astype(np.int64), n_calls.astype(np.int64), cost.astype(np.float64))


def fixed_route(route: tuple[int, ...], n_questions: int) -> np.ndarray:
    """int64 [Q, L]: the same route for every question."""
    return np.tile(np.asarray(route, dtype=np.int64), (n_questions, 1))


def final_states(route: tuple[int, ...], roots: np.ndarray, next_state: np.ndarray) -> np.ndarray:
    """Final state of the fixed `route` from each root; -1 where a call along the way is missing."""
    return replay(fixed_route(route, len(roots)), roots, RouteTables(next_state)).final_state


def policy_routes(actions: np.ndarray, n_experts: int) -> np.ndarray:
    """An env's greedy actions [..., D] as routes: STOP (action N) and the steps after the end are
    -1."""
    actions = np.asarray(actions, dtype=np.int64)
    return np.where((actions >= 0) & (actions < n_experts), actions, -1)


def reachable_states(roots: np.ndarray, next_state: np.ndarray, depth: int) -> np.ndarray:
    """int [K]: every state reachable from `roots` in 1..depth calls (the questions' answer
    states)."""
    found, frontier = [], np.unique(roots)
    for _ in range(depth):
        frontier = np.unique(next_state[frontier].ravel())
        frontier = frontier[frontier >= 0]
        found.append(frontier)
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)


def all_routes(n_experts: int, depth: int) -> list[tuple[int, ...]]:
    """Every expert sequence of length 1..depth (capped at MAX_ROUTES, shortest first)."""
    routes: list[tuple[int, ...]] = []
    for length in range(1, depth + 1):
        for route in itertools.product(range(n_experts), repeat=length):
            if len(routes) == MAX_ROUTES:
                return routes
            routes.append(route)
    return routes


def best_fixed_route(
    tables: RouteTables,
    train_roots: np.ndarray,
    t_max: int,
    n_experts: int,
    p0: float = 0.0,
    stop_at_p0: bool = False,
) -> tuple[int, ...]:
    """The route of at most T_max calls with the best mean final score on the train questions."""
    routes = all_routes(n_experts, t_max)
    scores = [
        tables.score[
            replay(
                fixed_route(r, len(train_roots)), train_roots, tables, p0, stop_at_p0
            ).final_state
        ].mean()
        for r in routes
    ]
    return routes[int(np.argmax(scores))]


def best_fixed_routes(cache: Cache, metric: str, split: str | None = None) -> list[dict]:
    """Every fixed route's mean final `metric` and mean parameter cost, best first.

    A route is scored only if it replays for every question of the split (complete caches)."""
    questions = (
        cache.questions if split is None else cache.questions.filter(pl.col("split") == split)
    )
    roots = questions["root_state_id"].to_numpy()
    scores = cache.states[metric].to_numpy()
    next_state = next_state_matrix(cache)
    params = np.array([e.get("params_b") or 0.0 for e in cache.manifest["experts"]])
    results = []
    for route in all_routes(next_state.shape[1], cache.depth):
        final = final_states(route, roots, next_state)
        if len(final) and (final >= 0).all():
            results.append(
                {
                    "route": [cache.expert_names[e] for e in route],
                    "score": float(scores[final].mean()),
                    "params_b": float(params[list(route)].sum()),
                }
            )
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
    means: dict[str, list[list[float | None]]] = {
        m: [[] for _ in range(n_experts)] for m in metrics
    }
    for step in range(1, cache.depth + 1):
        prefixes = list(itertools.product(range(n_experts), repeat=step - 1))
        starts = np.concatenate([final_states(prefix, roots, next_state) for prefix in prefixes])
        for expert in range(n_experts):
            final = final_states((expert,), starts, next_state)
            final = final[final >= 0]
            for metric in metrics:
                means[metric][expert].append(
                    float(scores[metric][final].mean()) if len(final) else None
                )
    return means
