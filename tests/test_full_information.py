"""Learning from the whole cache: on a synthetic world whose best routes are known
(`builders/routing.toml`), every algorithm learns routes that depend on the question and beats every
constant route on held-out questions, the full-information ones within 5% of the best-route oracle;
fqi with ridge at T_max = 1 is the `linear` router; a grid mixing the three algorithms trains,
resumes, evaluates, joins the routers table (one curve per algorithm) and routes live exactly as it
replays."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from dersim.builder.build import build_cache
from dersim.cli import main
from dersim.env.der_env import EnvParams, make_params
from dersim.env.tables import EnvSpec, split_roots
from dersim.env.values import backup, expected_return
from dersim.recipe import load_recipe
from dersim.routers.data import load_router_data
from dersim.routers.predictors import LinearRouter
from dersim.trainer.algorithms import ALGOS
from dersim.trainer.policy import mask_actions
from dersim.trainer.ppo import PPOConfig
from dersim.trainer.run import GridTrainer

from conftest import REPO

ALPHA = 0.3  # one point of the README's alpha sweep, where the cost of a call matters
L2 = [1.0, 10.0, 100.0]  # the README's l2 grid


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "cache"
    build_cache(load_recipe(REPO / "builders" / "routing.toml"), out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[GridTrainer, dict]:
    """Every algorithm at its defaults (the README's main command), one alpha, two seeds."""
    trainer = GridTrainer.from_grid(
        world,
        tmp_path_factory.mktemp("run") / "run",
        EnvSpec(),
        PPOConfig(),
        {"algo": list(ALGOS), "l2": L2, "alpha": [ALPHA]},
        seeds=2,
        steps=50_000,
    )
    state, _ = trainer.train(show_progress=False)
    return trainer, state


def oracle_return(params: EnvParams, roots: np.ndarray) -> float:
    """The best route per question, knowing every outcome (reads the reference): the DP's max."""
    value = jnp.zeros(params.next_state.shape[0])
    following = jnp.maximum(params.next_state, 0)
    states = jnp.arange(params.next_state.shape[0])
    for t in reversed(range(params.max_depth)):
        value = mask_actions(
            backup(params, states, jnp.int32(t), value[following]), params, jnp.int32(t)
        ).max(-1)
    return float(value[roots].mean())


def constant_returns(params: EnvParams, roots: np.ndarray) -> dict[tuple[int, ...], float]:
    """The exact return of every fixed route (a sequence of experts, then STOP if shorter than
    T_max)."""
    n, depth, n_states = params.n_experts, params.max_depth, params.next_state.shape[0]
    out = {}
    for length in range(1, depth + 1):
        for route in itertools.product(range(n), repeat=length):
            actions = [*route, n][:depth]
            probs = np.zeros((depth, n_states, n + 1), np.float32)
            for t, action in enumerate(actions):
                probs[t, :, action] = 1.0
            out[route] = float(expected_return(params, jnp.asarray(probs), jnp.asarray(roots)))
    return out


def test_every_algorithm_learns_the_known_routes(
    world: Path, trained: tuple[GridTrainer, dict]
) -> None:
    trainer, state = trained
    params = trainer.kept_params(state)
    test_roots = split_roots(trainer.tables, world, "test")[0]
    val = trainer.validate(params)
    test = trainer.greedy(params, trainer.env_params, test_roots)["return"].mean(axis=1)
    env = make_params(trainer.tables, alpha=ALPHA)
    oracle = oracle_return(env, test_roots)
    constants = constant_returns(env, test_roots)
    best_constant = max(constants.values())
    for algo in ALGOS:
        members = [i for i, p in enumerate(trainer.policies) if p["algo"] == algo]
        chosen = members[
            int(np.argmax(val["val_return"][members]))
        ]  # the objective, at this one alpha
        print(
            f"{algo}: test return {test[chosen]:.4f}, oracle {oracle:.4f}, best constant route "
            f"{best_constant:.4f}"
        )
        assert test[chosen] > best_constant + 0.02, (algo, test[chosen], constants)
        if algo != "ppo":
            assert test[chosen] >= 0.95 * oracle, (algo, test[chosen], oracle)


def test_fqi_with_ridge_at_one_call_is_the_linear_router(tmp_path: Path) -> None:
    cache = REPO / "cache" / "strategyqa"
    trainer = GridTrainer.from_grid(
        cache,
        tmp_path / "run",
        EnvSpec(t_max=1),
        PPOConfig(),
        {"l2": [0.1, 1.0, 10.0], "alpha": [0.0, 0.1, 0.5, 2.0]},
        seeds=1,
        steps=1,
        algo="fqi",
    )
    state, _ = trainer.train(show_progress=False)
    data = load_router_data(cache)
    test = data.questions("test")
    first = trainer.greedy(trainer.kept_params(state), trainer.env_params, test.roots)["actions"][
        :, :, 0
    ]
    train = data.train_data("train", None)
    assert np.array_equal(train.questions.roots, trainer.tables.roots)
    differing = 0
    for i, policy in enumerate(trainer.policies):
        routed = LinearRouter(l2=policy["l2"]).fit(train).route(test, policy["alpha"]).calls[:, 0]
        differing += int((routed != first[i]).sum())
    assert any(len(set(row.tolist())) > 1 for row in first), "some policy routes by the question"
    assert differing == 0


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_mixed_grid_trains_resumes_evaluates_compares_and_routes_live(
    world: Path, tmp_path: Path
) -> None:
    common = [
        "train",
        "--vectorized",
        "--cache",
        str(world),
        "--grid",
        "algo=ppo,exact-pg,fqi",
        "--grid",
        "alpha=0.1,1",
        "--seeds",
        "1",
        "--steps",
        "5120",
        "--updates",
        "40",
        "--quiet",
    ]
    cli(*common, "--out", str(tmp_path / "whole"))
    cli(*common, "--out", str(tmp_path / "resumed"), "--stop-after-chunks", "2")
    cli(*common, "--out", str(tmp_path / "resumed"), "--resume")
    for run in ("whole", "resumed"):
        cli("eval", "--run", str(tmp_path / run))
    frames = [pl.read_parquet(tmp_path / run / "runs.parquet") for run in ("whole", "resumed")]
    assert frames[0].equals(frames[1]), "a resumed mixed grid ends where an uninterrupted one does"
    assert set(frames[0]["algo"]) == set(ALGOS)
    out = tmp_path / "routers"
    cli(
        "routers",
        "--cache",
        str(world),
        "--run",
        str(tmp_path / "whole"),
        "--routers",
        "linear,oracle",
        "--seeds",
        "1",
        "--bootstrap",
        "50",
        "--out",
        str(out),
        "--quiet",
    )
    names = [r["name"] for r in json.loads((out / "routers.json").read_text())["routers"]]
    assert {f"der: {algo}" for algo in ALGOS} <= set(names)
    record = json.loads((tmp_path / "whole" / "run.json").read_text())
    fqi = next(i for i, p in enumerate(record["policies"]) if p["algo"] == "fqi")
    result = CliRunner().invoke(
        main,
        ["route", "--run", str(tmp_path / "whole"), "--policy", str(fqi), "--check", "6", "--json"],
    )
    assert result.exit_code == 0, result.output
