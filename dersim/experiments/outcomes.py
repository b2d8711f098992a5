"""Per-question outcomes of every row on the test split, one row of arrays per seed.

A trained setting's greedy episodes (each seed's kept parameters) and a rule's routes are both
replayed through the grid's view of the cache with three cost tables: the run's cost mode,
billions of parameters and seconds (the paper's "inference params" and "s/sample"), so every row
is costed the same way. Scores are looked up in the cache's states for every metric it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dersim.cache.check import read_checked
from dersim.cache.routes import Outcome, RouteTables, policy_routes, replay, replay_from_root
from dersim.cache.schema import STATES
from dersim.env.tables import EnvSpec, EnvTables, load_tables
from dersim.errors import DersimError
from dersim.experiments.grids import TrainedGrid

COSTS = ("cost", "params", "seconds")


@dataclass(frozen=True)
class CostTables:
    """A view's next-state table with its cost tables ([S, N] each; None when unknown)."""

    next_state: np.ndarray
    cost: np.ndarray
    params: np.ndarray | None
    seconds: np.ndarray | None


def cost_tables(tables: EnvTables, cache, spec: EnvSpec) -> CostTables:
    """The same view of the cache costed in parameters and in seconds, where the cache knows
    them."""

    def other(mode: str) -> np.ndarray | None:
        try:
            return load_tables(
                cache, replace(spec, cost_mode=mode, split="all", terminator="none"), verify=False
            ).cost
        except DersimError:  # no sizes, or no latencies recorded
            return None

    return CostTables(tables.next_state, tables.cost, other("params"), other("latency"))


def replay_costed(
    routes: np.ndarray, roots: np.ndarray, costs: CostTables, keep: np.ndarray | None = None
) -> Outcome:
    """Routes [K, Q, L] (K seeds, -1 = no more calls) from `roots` with knowledge transfer, or, with
    `keep` ([Q], one seed), every call from the root keeping call keep[q]'s answer; costed three
    ways: the outcome's `params` and `seconds` are [K, Q] (NaN where the cache does not know
    them)."""

    def run(table: np.ndarray) -> Outcome:
        tables = RouteTables(costs.next_state, cost=table)
        if keep is None:
            return replay(routes, roots, tables)
        one = replay_from_root(routes[0], roots, tables, keep)
        return Outcome(one.final_state[None], one.calls[None], one.cost[None])

    def cost(table: np.ndarray | None) -> np.ndarray:
        return np.full(routes.shape[:-1], np.nan) if table is None else run(table).cost

    return replace(run(costs.cost), params=cost(costs.params), seconds=cost(costs.seconds))


def setting_outcome(
    trained: TrainedGrid, policies: list[int], roots: np.ndarray, costs: CostTables
) -> Outcome:
    """The seeds `policies` of a trained grid, greedy on `roots`, replayed and checked against the
    env; calls count LLM calls (two per step when a step calls a pair)."""
    trainer = trained.trainer
    result = trainer.greedy(trainer.kept_params(trained.state), trainer.env_params, roots)
    routes = policy_routes(result["actions"][policies], costs.next_state.shape[1])
    outcome = replay_costed(routes, roots, costs)
    if not np.array_equal(outcome.final_state, result["final_state"][policies]):
        raise AssertionError("replaying the greedy actions did not reach the env's final states")
    return replace(
        outcome, calls=outcome.calls * trainer.spec.experts_per_step
    )  # LLM calls, not steps


def metric_scores(cache, metrics: list[str]) -> dict[str, np.ndarray]:
    """Every metric column of the cache's states (float32 [S] each), checked."""
    states = read_checked(
        cache, {STATES: metrics}, verify_hashes=False, metrics=metrics, embeddings=False
    )[1][STATES]
    return {m: states[m].to_numpy().astype(np.float32) for m in metrics}
