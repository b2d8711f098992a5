"""Fixed-route replay through a cache, checked against a plain walk over the transitions table."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dersim.builder.build import build_cache
from dersim.cache.info import cache_summary
from dersim.cache.reader import open_cache
from dersim.cache.routes import (
    RouteTables,
    all_routes,
    best_fixed_routes,
    expert_scores_by_step,
    final_states,
    next_state_matrix,
    replay,
    replay_from_root,
)
from dersim.errors import CacheFormatError
from dersim.recipe import load_recipe

from conftest import synthetic_recipe_text


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("routes")
    (root / "r.toml").write_text(synthetic_recipe_text(depth=3), encoding="utf-8")
    build_cache(load_recipe(root / "r.toml"), root / "c", show_progress=False)
    return open_cache(root / "c")


def walk(cache, root: int, route: tuple[int, ...]) -> int:
    """The slow reference: look each call up in the transitions rows."""
    edges = {
        (s, e): t
        for s, e, t in cache.transitions.select(
            "state_id", "expert_id", "next_state_id"
        ).iter_rows()
    }
    state = root
    for expert in route:
        state = edges.get((state, expert))
        if state is None:
            return -1
    return state


def test_replay_matches_a_plain_walk(cache) -> None:
    roots = cache.questions["root_state_id"].to_numpy()
    next_state = next_state_matrix(cache)
    for route in [(0,), (2, 1), (1, 1, 0), (2, 2, 2)]:
        fast = final_states(route, roots, next_state)
        assert fast.tolist() == [walk(cache, int(r), route) for r in roots]


def test_routes_beyond_the_built_depth_end_where_nothing_was_built(cache) -> None:
    roots = cache.questions["root_state_id"].to_numpy()
    next_state = next_state_matrix(cache)
    route = (2, 1, 2, 0)
    assert final_states(route, roots, next_state).tolist() == [
        walk(cache, int(r), route) for r in roots
    ]
    four_calls = [final_states(r, roots, next_state) for r in all_routes(3, 4) if len(r) == 4]
    assert any((final == -1).any() for final in four_calls), "depth-D states have no transitions"


def test_a_batch_of_routes_replays_as_each_route_alone_with_its_path_and_cost(cache) -> None:
    """Policies x questions x steps in one replay equal one question at a time along a plain
    walk."""
    roots = cache.questions["root_state_id"].to_numpy()
    next_state = next_state_matrix(cache)
    cost = np.random.default_rng(0).random(next_state.shape).astype(np.float32)
    routes = np.random.default_rng(1).integers(0, 3, size=(4, len(roots), 3))
    routes[
        np.random.default_rng(2).random(routes.shape[:2]) < 0.3, 2
    ] = -1  # some routes end after two calls
    routes[0, :, :] = -1  # a policy that never calls
    outcome = replay(routes, roots, RouteTables(next_state, cost=cost), with_path=True)
    for p in range(routes.shape[0]):
        for q, root in enumerate(roots):
            route = tuple(int(e) for e in routes[p, q] if e >= 0)
            path = [int(root)]
            for expert in route:
                path.append(int(next_state[path[-1], expert]))
            assert outcome.final_state[p, q] == walk(cache, int(root), route) == path[-1]
            assert outcome.calls[p, q] == len(route)
            assert outcome.path[p, q, : len(route) + 1].tolist() == path
            paid = sum(float(cost[s, e]) for s, e in zip(path[:-1], route, strict=True))
            assert outcome.cost[p, q] == pytest.approx(paid)


def test_a_route_without_transfer_answers_from_the_root_and_keeps_the_chosen_call(cache) -> None:
    roots = cache.questions["root_state_id"].to_numpy()
    next_state = next_state_matrix(cache)
    cost = np.ones(next_state.shape, np.float32)
    routes = np.tile([2, 0, 1], (len(roots), 1))
    keep = np.arange(len(roots)) % 3
    outcome = replay_from_root(routes, roots, RouteTables(next_state, cost=cost), keep)
    assert outcome.final_state.tolist() == [
        int(next_state[r, routes[0, k]]) for r, k in zip(roots, keep, strict=True)
    ]
    assert (outcome.calls == 3).all() and (outcome.cost == 3.0).all()
    last = replay_from_root(routes, roots, RouteTables(next_state))
    assert last.final_state.tolist() == next_state[roots, 1].tolist() and (last.cost == 0).all()


def test_best_fixed_route_beats_every_single_expert(cache) -> None:
    assert len(all_routes(3, 3)) == 3 + 9 + 27
    ranked = best_fixed_routes(cache, "accuracy")
    assert len(ranked) == 39
    assert ranked[0]["score"] == max(r["score"] for r in ranked)
    singles = [r for r in ranked if len(r["route"]) == 1]
    summary = cache_summary(cache)
    for single in singles:
        expert = next(e for e in summary["experts"] if e["name"] == single["route"][0])
        assert single["score"] == pytest.approx(expert["depth1"]["accuracy"])
    assert summary["best_fixed_route"]["accuracy"] == ranked[0]
    costs = {e["name"]: e["params_b"] for e in summary["experts"]}
    assert ranked[0]["params_b"] == pytest.approx(sum(costs[name] for name in ranked[0]["route"]))
    assert summary["oracle_any_state"]["accuracy"] >= ranked[0]["score"]


def test_answer_score_quantiles_split_the_answers(cache) -> None:
    quantiles = cache_summary(cache)["answer_score_quantiles"]["token_f1"]
    answers = cache.states.filter(pl.col("depth") > 0)["token_f1"].to_numpy()
    values = [quantiles[key] for key in ("0.25", "0.5", "0.75", "0.9")]
    assert values == sorted(values)
    for q, value in zip((0.25, 0.5, 0.75, 0.9), values, strict=True):
        assert (answers <= value).mean() >= q and (answers >= value).mean() >= 1 - q - 1e-9


def test_expert_scores_by_step_average_every_route_ending_with_the_expert(cache) -> None:
    by_step = expert_scores_by_step(cache, ["token_f1"])["token_f1"]
    assert len(by_step) == 3 and all(len(steps) == 3 for steps in by_step)
    roots = cache.questions["root_state_id"].to_list()
    score = dict(cache.states.select("state_id", "token_f1").iter_rows())
    for expert in range(3):
        for step in range(1, 4):
            routes = [r for r in all_routes(3, step) if len(r) == step and r[-1] == expert]
            finals = [score[walk(cache, root, route)] for route in routes for root in roots]
            assert by_step[expert][step - 1] == pytest.approx(sum(finals) / len(finals))
    summary = cache_summary(cache)
    assert [e["by_step"]["token_f1"] for e in summary["experts"]] == by_step
    assert [e["by_step"]["token_f1"][0] for e in summary["experts"]] == pytest.approx(
        [e["depth1"]["token_f1"] for e in summary["experts"]]
    )


def test_old_caches_without_new_columns_get_a_one_line_error(cache, tmp_path: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(cache.path, copy, ignore=shutil.ignore_patterns("journal"))
    pl.read_parquet(copy / "transitions.parquet").drop("cost_usd").write_parquet(
        copy / "transitions.parquet"
    )
    with pytest.raises(CacheFormatError, match="missing column 'cost_usd'"):
        open_cache(copy, verify_hashes=False)  # (the hash check would name the changed file first)
