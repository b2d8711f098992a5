"""Baselines on the same questions as the policies, replayed from the cache.

Deployable baselines never read the reference: fixed routes (each single expert, self-refinement,
round-robin, the best fixed route chosen on the train split) make all their calls, and random
routing copies the chosen policy's route-length distribution. Reference rows read it and are
labelled so: the best fixed route with the oracle stop (stops as soon as the answer reaches p0),
and two oracles that bound what any router could reach in the cache: the best single expert per
question and the best state any route of at most T_max calls reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dersim.cache.routes import all_routes


@dataclass(frozen=True)
class RouteTables:
    """What replaying needs: successor table, the score that drives stopping, each call's cost."""

    next_state: np.ndarray  # int32 [S, N]
    score: np.ndarray  # float32 [S]
    cost: np.ndarray  # float32 [S, N], raw unit


@dataclass(frozen=True)
class Outcome:
    """Per question: final state, calls made and summed cost (raw unit)."""

    final_state: np.ndarray
    calls: np.ndarray
    cost: np.ndarray


@dataclass(frozen=True)
class Baseline:
    name: str
    outcome: Outcome
    uses_reference: bool


def run_routes(routes: np.ndarray, roots: np.ndarray, tables: RouteTables, p0: float = 0.0,
               stop_at_p0: bool = False) -> Outcome:
    """Replay one route per question (`routes[q]`, -1 = no more calls), stopping at p0 if asked
    (that reads the reference)."""
    state = roots.astype(np.int64).copy()
    calls = np.zeros(len(roots), dtype=np.int64)
    cost = np.zeros(len(roots), dtype=np.float64)
    active = np.ones(len(roots), dtype=bool)
    for step in range(routes.shape[1]):
        expert = np.maximum(routes[:, step], 0)
        active &= routes[:, step] >= 0
        if not active.any():
            break
        cost += np.where(active, tables.cost[state, expert], 0.0)
        state = np.where(active, tables.next_state[state, expert], state)
        calls += active
        if stop_at_p0:
            active &= tables.score[state] < np.float32(p0)
    return Outcome(state, calls, cost)


def fixed_route(route: tuple[int, ...], n_questions: int) -> np.ndarray:
    return np.tile(np.asarray(route, dtype=np.int64), (n_questions, 1))


def best_fixed_route(tables: RouteTables, train_roots: np.ndarray, t_max: int, n_experts: int, p0: float = 0.0,
                     stop_at_p0: bool = False) -> tuple[int, ...]:
    """The route of at most T_max calls with the best mean final score on the train questions."""
    routes = all_routes(n_experts, t_max)
    scores = [tables.score[run_routes(fixed_route(r, len(train_roots)), train_roots, tables, p0,
                                      stop_at_p0).final_state].mean() for r in routes]
    return routes[int(np.argmax(scores))]


def baselines(tables: RouteTables, roots: np.ndarray, train_roots: np.ndarray, expert_names: list[str], t_max: int,
              p0: float, policy_calls: np.ndarray, seed: int = 0) -> list[Baseline]:
    """Every baseline's outcome on the questions `roots` (`train_roots` choose the best fixed routes;
    `policy_calls` is the chosen policy's route lengths, for random routing)."""
    n, q = len(expert_names), len(roots)
    out = [Baseline(f"single: {name}", run_routes(fixed_route((e,), q), roots, tables), False)
           for e, name in enumerate(expert_names)]
    if t_max > 1:
        out += [Baseline(f"self-refine x{t_max}: {name}", run_routes(fixed_route((e,) * t_max, q), roots, tables),
                         False) for e, name in enumerate(expert_names)]
        out.append(Baseline(f"round-robin x{t_max}",
                            run_routes(fixed_route(tuple(i % n for i in range(t_max)), q), roots, tables), False))
    best = best_fixed_route(tables, train_roots, t_max, n)
    out.append(Baseline("best fixed route (train): " + " > ".join(expert_names[e] for e in best),
                        run_routes(fixed_route(best, q), roots, tables), False))
    rng = np.random.default_rng(seed)
    lengths = rng.choice(np.maximum(policy_calls, 1), size=q)
    random_routes = np.where(np.arange(t_max)[None, :] < lengths[:, None], rng.integers(0, n, size=(q, t_max)), -1)
    out.append(Baseline("random routing (policy's lengths)", run_routes(random_routes, roots, tables), False))
    stopped = best_fixed_route(tables, train_roots, t_max, n, p0, stop_at_p0=True)
    out.append(Baseline("best fixed route + oracle stop: " + " > ".join(expert_names[e] for e in stopped),
                        run_routes(fixed_route(stopped, q), roots, tables, p0, stop_at_p0=True), True))
    out.append(Baseline("oracle: best expert per question", per_question_best([(e,) for e in range(n)], roots,
                                                                              tables), True))
    out.append(Baseline(f"oracle: best route in cache (<= {t_max} calls)",
                        per_question_best(all_routes(n, t_max), roots, tables), True))
    return out


def per_question_best(routes: list[tuple[int, ...]], roots: np.ndarray, tables: RouteTables) -> Outcome:
    """Per question, the route (from `routes`) with the best final score, cheapest among ties."""
    outcomes = [run_routes(fixed_route(r, len(roots)), roots, tables) for r in routes]
    scores = np.stack([tables.score[o.final_state] for o in outcomes])  # [R, Q]
    costs = np.stack([o.cost for o in outcomes])
    order = np.lexsort((costs, -scores), axis=0)[0]  # best score, then lowest cost
    pick = np.arange(len(roots))
    return Outcome(np.stack([o.final_state for o in outcomes])[order, pick],
                   np.stack([o.calls for o in outcomes])[order, pick], costs[order, pick])
