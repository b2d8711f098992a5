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

from dersim.cache.routes import (
    Outcome,
    RouteTables,
    all_routes,
    best_fixed_route,
    fixed_route,
    replay,
)


@dataclass(frozen=True)
class Baseline:
    name: str
    outcome: Outcome
    uses_reference: bool


def baselines(
    tables: RouteTables,
    roots: np.ndarray,
    train_roots: np.ndarray,
    expert_names: list[str],
    t_max: int,
    p0: float,
    policy_calls: np.ndarray,
    seed: int = 0,
) -> list[Baseline]:
    """Every baseline's outcome on the questions `roots` (`train_roots` choose the best fixed
    routes; `policy_calls` is the chosen policy's route lengths, for random routing)."""
    n, q = len(expert_names), len(roots)
    out = [
        Baseline(f"single: {name}", replay(fixed_route((e,), q), roots, tables), False)
        for e, name in enumerate(expert_names)
    ]
    if t_max > 1:
        out += [
            Baseline(
                f"self-refine x{t_max}: {name}",
                replay(fixed_route((e,) * t_max, q), roots, tables),
                False,
            )
            for e, name in enumerate(expert_names)
        ]
        out.append(
            Baseline(
                f"round-robin x{t_max}",
                replay(fixed_route(tuple(i % n for i in range(t_max)), q), roots, tables),
                False,
            )
        )
    best = best_fixed_route(tables, train_roots, t_max, n)
    out.append(
        Baseline(
            "best fixed route (train): " + " > ".join(expert_names[e] for e in best),
            replay(fixed_route(best, q), roots, tables),
            False,
        )
    )
    rng = np.random.default_rng(seed)
    lengths = rng.choice(np.maximum(policy_calls, 1), size=q)
    random_routes = np.where(
        np.arange(t_max)[None, :] < lengths[:, None], rng.integers(0, n, size=(q, t_max)), -1
    )
    out.append(
        Baseline("random routing (policy's lengths)", replay(random_routes, roots, tables), False)
    )
    stopped = best_fixed_route(tables, train_roots, t_max, n, p0, stop_at_p0=True)
    out.append(
        Baseline(
            "best fixed route + oracle stop: " + " > ".join(expert_names[e] for e in stopped),
            replay(fixed_route(stopped, q), roots, tables, p0, stop_at_p0=True),
            True,
        )
    )
    out.append(
        Baseline(
            "oracle: best expert per question",
            per_question_best([(e,) for e in range(n)], roots, tables),
            True,
        )
    )
    out.append(
        Baseline(
            f"oracle: best route in cache (<= {t_max} calls)",
            per_question_best(all_routes(n, t_max), roots, tables),
            True,
        )
    )
    return out


def per_question_best(
    routes: list[tuple[int, ...]], roots: np.ndarray, tables: RouteTables
) -> Outcome:
    """Per question, the route (from `routes`) with the best final score, cheapest among ties."""
    longest = max(len(r) for r in routes)
    padded = np.stack(
        [fixed_route(r + (-1,) * (longest - len(r)), len(roots)) for r in routes]
    )  # [R, Q, L]
    outcome = replay(padded, roots, tables)
    scores = tables.score[outcome.final_state]  # [R, Q]
    order = np.lexsort((outcome.cost, -scores), axis=0)[0]  # best score, then lowest cost
    pick = np.arange(len(roots))
    return Outcome(
        outcome.final_state[order, pick], outcome.calls[order, pick], outcome.cost[order, pick]
    )
