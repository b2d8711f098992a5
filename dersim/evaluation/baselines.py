"""Honest baselines on the same questions as the policies, replayed from the cache.

Each baseline is a rule for choosing experts; under the `oracle` terminator it stops, like the
policies, as soon as the answer reaches p0, otherwise it makes its calls. Besides fixed routes
(each single expert, self-refinement, round-robin, the best fixed route chosen on the train split)
and random routing with the policy's own route-length distribution, two oracles bound what any
router could reach in the cache: the best single expert per question and the best state any route
of at most T_max calls reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dersim.cache.routes import all_routes


@dataclass(frozen=True)
class RouteTables:
    """What replaying needs: successor table, the score that drives stopping, per-expert params."""

    next_state: np.ndarray  # int32 [S, N]
    score: np.ndarray  # float32 [S]
    params_b: np.ndarray  # float32 [N]


@dataclass(frozen=True)
class Outcome:
    """Per question: final state, calls made and parameters activated (billions)."""

    final_state: np.ndarray
    calls: np.ndarray
    params_b: np.ndarray


def run_routes(routes: np.ndarray, roots: np.ndarray, tables: RouteTables, p0: float, stop_at_p0: bool) -> Outcome:
    """Replay one route per question (`routes[q]`, -1 = no more calls), stopping at p0 if asked."""
    state = roots.astype(np.int64).copy()
    calls = np.zeros(len(roots), dtype=np.int64)
    cost = np.zeros(len(roots), dtype=np.float64)
    active = np.ones(len(roots), dtype=bool)
    for step in range(routes.shape[1]):
        expert = routes[:, step]
        active &= expert >= 0
        if not active.any():
            break
        moved = tables.next_state[state, np.maximum(expert, 0)]
        state = np.where(active, moved, state)
        calls += active
        cost += np.where(active, tables.params_b[np.maximum(expert, 0)], 0.0)
        if stop_at_p0:
            active &= tables.score[state] < p0
    return Outcome(state, calls, cost)


def fixed_route(route: tuple[int, ...], n_questions: int) -> np.ndarray:
    return np.tile(np.asarray(route, dtype=np.int64), (n_questions, 1))


def baseline_outcomes(tables: RouteTables, roots: np.ndarray, train_roots: np.ndarray, expert_names: list[str],
                      t_max: int, p0: float, stop_at_p0: bool, policy_calls: np.ndarray,
                      seed: int = 0) -> dict[str, Outcome]:
    """Every baseline's outcome on the questions `roots` (train_roots choose the best fixed route)."""
    n, q = len(expert_names), len(roots)
    out: dict[str, Outcome] = {}
    for e, name in enumerate(expert_names):
        out[f"single: {name}"] = run_routes(fixed_route((e,), q), roots, tables, p0, stop_at_p0)
    if t_max > 1:
        for e, name in enumerate(expert_names):
            out[f"self-refine x{t_max}: {name}"] = run_routes(fixed_route((e,) * t_max, q), roots, tables, p0,
                                                             stop_at_p0)
        out[f"round-robin x{t_max}"] = run_routes(fixed_route(tuple(i % n for i in range(t_max)), q), roots,
                                                  tables, p0, stop_at_p0)
    routes = all_routes(n, t_max)
    train_scores = [tables.score[run_routes(fixed_route(r, len(train_roots)), train_roots, tables, p0,
                                            stop_at_p0).final_state].mean() for r in routes]
    best = routes[int(np.argmax(train_scores))]
    out["best fixed route (train): " + " > ".join(expert_names[e] for e in best)] = run_routes(
        fixed_route(best, q), roots, tables, p0, stop_at_p0)
    rng = np.random.default_rng(seed)
    lengths = rng.choice(np.maximum(policy_calls, 1), size=q)
    random_routes = np.where(np.arange(t_max)[None, :] < lengths[:, None], rng.integers(0, n, size=(q, t_max)), -1)
    out["random (policy's lengths)"] = run_routes(random_routes, roots, tables, p0, stop_at_p0)
    out["oracle: best expert per question"] = _per_question_best([(e,) for e in range(n)], roots, tables)
    out[f"oracle: best route in cache (<= {t_max} calls)"] = _per_question_best(routes, roots, tables)
    return out


def _per_question_best(routes: list[tuple[int, ...]], roots: np.ndarray, tables: RouteTables) -> Outcome:
    """Per question, the route (from `routes`) with the best final score, cheapest among ties."""
    outcomes = [run_routes(fixed_route(r, len(roots)), roots, tables, 0.0, False) for r in routes]
    scores = np.stack([tables.score[o.final_state] for o in outcomes])  # [R, Q]
    costs = np.stack([o.params_b for o in outcomes])
    order = np.lexsort((costs, -scores), axis=0)[0]  # best score, then lowest cost
    pick = np.arange(len(roots))
    return Outcome(np.stack([o.final_state for o in outcomes])[order, pick],
                   np.stack([o.calls for o in outcomes])[order, pick], costs[order, pick])
