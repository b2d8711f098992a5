"""The vectorized PPO trainer: it learns a known best route, is deterministic bit for bit,
resumes exactly, compiles its chunk once, guards against NaNs, and shards the policy axis."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from dersim.builder.build import build_cache
from dersim.cli import main
from dersim.env.reference import DERGymEnv
from dersim.env.tables import EnvSpec
from dersim.errors import DersimError
from dersim.evaluation.report import evaluate
from dersim.recipe import load_recipe
from dersim.trainer.grid import GridError, parse_grid
from dersim.trainer.ppo import PPOConfig
from dersim.trainer.run import GridTrainer

from conftest import REPO, STRATEGYQA, episode_return

# One expert is always right and cheap enough: the best route is "call `oracle-like` once".
KNOWN_BEST = f"""
name = "known-best"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{STRATEGYQA}"
train = 16
test = 8
[build]
depth = 2
[metrics]
names = ["accuracy_yesno", "token_f1"]
[embedding]
model = "hashing"
dim = 32
[[experts]]
name = "wrong-mostly"
backend = "synthetic"
params_b = 0.5
options = {{ skill = 0.1, refine = 0.0 }}
[[experts]]
name = "coin"
backend = "synthetic"
params_b = 1.0
options = {{ skill = 0.5, refine = 0.3 }}
[[experts]]
name = "always-right"
backend = "synthetic"
params_b = 3.0
options = {{ skill = 1.0, refine = 1.0 }}
"""
SMALL = PPOConfig(
    num_envs=8, num_steps=8, update_epochs=2, num_minibatches=2, hidden=32, updates_per_chunk=10
)
# The paper's settings: oracle terminator, paper reward, raw costs, gamma = 2.
SPEC = EnvSpec(
    metric="accuracy",
    p0=0.5,
    terminator="oracle",
    reward="paper",
    alpha=0.001,
    cost_scale=1.0,
    gamma=2.0,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trainer")
    (root / "r.toml").write_text(KNOWN_BEST, encoding="utf-8")
    build_cache(load_recipe(root / "r.toml"), root / "cache", show_progress=False)
    return root / "cache"


def trainer(
    cache: Path,
    out: Path,
    grid: dict | None = None,
    seeds: int = 2,
    steps: int = 2 * 640,
    spec: EnvSpec = SPEC,
    keep: str = "best",
) -> GridTrainer:
    return GridTrainer.from_grid(
        cache, out, spec, SMALL, grid or {}, seeds, steps, keep, algo="ppo"
    )


def leaves(runner) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(runner.params)]


def test_policies_reach_95_percent_of_the_oracle_return(cache: Path, tmp_path: Path) -> None:
    # beta = 0 and a real price per call: the best route is short and the cheap experts only pay off
    # where they happen to be right, which the per-question oracle knows and a policy must learn.
    # It measures learning on the questions trained on: no val split, the last parameters.
    spec = EnvSpec(
        metric="accuracy",
        p0=0.5,
        alpha=0.1,
        beta=0.0,
        terminator="oracle",
        reward="paper",
        cost_scale=1.0,
        gamma=2.0,
        val_fraction=0.0,
    )
    run = trainer(cache, tmp_path / "run", seeds=2, steps=40 * 640, spec=spec, keep="last")
    state, _ = run.train(show_progress=False)
    env = DERGymEnv(cache, spec)
    n_questions = len(run.tables.roots)
    routes = [r for length in (1, 2) for r in itertools.product(range(3), repeat=length)]
    oracle = np.mean(
        [max(episode_return(env, q, list(r)) for r in routes) for q in range(n_questions)]
    )
    always_right = np.mean([episode_return(env, q, [2]) for q in range(n_questions)])
    assert oracle > always_right, "the per-question oracle must beat the best fixed route"
    greedy = run.greedy(run.kept_params(state), run.env_params, run.tables.roots)
    for policy in range(len(run.policies)):
        achieved = np.mean(
            [
                episode_return(env, q, [a for a in greedy["actions"][policy, q] if a >= 0])
                for q in range(n_questions)
            ]
        )
        assert achieved >= 0.95 * oracle, (policy, achieved, oracle)


def test_training_is_deterministic_bit_for_bit(cache: Path, tmp_path: Path) -> None:
    first = trainer(cache, tmp_path / "a").train(show_progress=False)[0].groups[0]
    second = trainer(cache, tmp_path / "b").train(show_progress=False)[0].groups[0]
    for x, y in zip(leaves(first), leaves(second), strict=True):
        assert np.array_equal(x, y)
    other_seed = trainer(cache, tmp_path / "c", seeds=3).train(show_progress=False)[0].groups[0]
    assert not np.array_equal(leaves(other_seed)[0][2], leaves(first)[0][0])


def test_resume_continues_exactly_and_compiles_once(cache: Path, tmp_path: Path) -> None:
    whole = trainer(cache, tmp_path / "whole", steps=3 * 640)
    straight_state, straight_curves = whole.train(show_progress=False)
    assert whole.groups[0].algorithm._chunk._cache_size() == 1, (
        "the chunk function must compile once for all chunks"
    )
    part = trainer(cache, tmp_path / "part", steps=3 * 640)
    part.train(show_progress=False, stop_after=1)
    assert not part.finished
    resumed_run = trainer(cache, tmp_path / "part", steps=3 * 640)
    resumed_state, curves = resumed_run.train(resume=True, show_progress=False)
    assert resumed_run.finished and curves.height == straight_curves.height
    assert curves.equals(straight_curves), "val figures and training metrics resume exactly"
    for key in ("groups", "best"):
        for x, y in zip(
            jax.tree.leaves(getattr(straight_state, key)),
            jax.tree.leaves(getattr(resumed_state, key)),
            strict=True,
        ):
            assert np.array_equal(np.asarray(x), np.asarray(y)), key
    with pytest.raises(DersimError, match="--resume needs the same"):
        trainer(cache, tmp_path / "part", steps=5 * 640).train(resume=True, show_progress=False)


def test_nan_rewards_skip_updates_instead_of_poisoning_the_policy(
    cache: Path, tmp_path: Path
) -> None:
    run = trainer(cache, tmp_path / "nan", seeds=1, steps=640)
    ppo = run.groups[0].algorithm
    ppo.env_params = ppo.env_params.replace(score=ppo.env_params.score * np.nan)
    start = leaves(run.initial_state().groups[0])
    state, curves = run.train(show_progress=False)
    runner = state.groups[0]
    assert (
        curves["skipped_updates"].sum()
        == SMALL.updates_per_chunk * SMALL.update_epochs * SMALL.num_minibatches
    )
    for x, y in zip(start, leaves(runner), strict=True):
        assert np.isfinite(y).all() and np.array_equal(x, y)


def test_grid_expands_over_seeds_and_settings(cache: Path, tmp_path: Path) -> None:
    grid = parse_grid(
        ("lr=1e-3,3e-4", "terminator=oracle,learned,none,judge", "t_max=1,2", "reward=paper,final")
    )
    run = trainer(cache, tmp_path / "grid", grid=grid, seeds=2, steps=640)
    assert len(run.policies) == 2 * 4 * 2 * 2 * 2
    assert {p["terminator"] for p in run.policies} == {"oracle", "learned", "none", "judge"}
    _, curves = run.train(show_progress=False)
    calls = curves.group_by("policy").agg(pl.col("calls").max()).sort("policy")["calls"].to_numpy()
    t_max = np.array([p["t_max"] for p in run.policies])
    assert (calls <= t_max + 1e-6).all(), "no episode makes more than its policy's T_max calls"
    for bad, message in (
        ("lr", "expected name=v1"),
        ("colour=1", "unknown setting 'colour'"),
        ("terminator=maybe", "unknown terminator 'maybe'"),
        ("lr=fast", "could not convert"),
        ("lr=-1", "lr = -1 must be > 0"),
        ("alpha=nan", "alpha = nan is not a finite number"),
        ("p0=2", r"p0 = 2 must be within \[0, 1\]"),
        ("reward=bonus", "unknown reward 'bonus'"),
    ):
        with pytest.raises(GridError, match=message):
            parse_grid((bad,))
    with pytest.raises(DersimError, match="T_max = 3 but the cache is built to depth 2"):
        trainer(cache, tmp_path / "deep", grid={"t_max": [3]})
    with pytest.raises(DersimError, match="t_max values must be at least 1"):
        trainer(cache, tmp_path / "zero", grid={"t_max": [0, 1]})


def test_policy_axis_shards_across_devices(cache: Path, tmp_path: Path) -> None:
    script = f"""
import jax, numpy as np, sys
sys.path.insert(0, {str(REPO / "tests")!r})
from test_trainer import trainer
from pathlib import Path
assert jax.device_count() == 4
run = trainer(Path({str(cache)!r}), Path({str(tmp_path / "sharded")!r}), seeds=4, steps=640)
runner = run.train(show_progress=False)[0].groups[0]
leaf = jax.tree.leaves(runner.params)[0]
print(len(leaf.sharding.device_set))
np.save({str(tmp_path / "sharded.npy")!r}, np.asarray(leaf))
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "4", (
        "the policy axis must be spread over the 4 devices"
    )
    single = (
        trainer(cache, tmp_path / "single", seeds=4, steps=640)
        .train(show_progress=False)[0]
        .groups[0]
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "sharded.npy"),
        np.asarray(jax.tree.leaves(single.params)[0]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_train_and_eval_commands(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--vectorized",
            "--algo",
            "ppo",
            "--cache",
            str(cache),
            "--seeds",
            "2",
            "--steps",
            "640",
            "--num-envs",
            "8",
            "--rollout",
            "8",
            "--chunk-updates",
            "10",
            "--metric",
            "accuracy",
            "--p0",
            "0.5",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("run.json", "curves.parquet", "curves.png", "checkpoint.msgpack"):
        assert (out / name).exists(), name
    evaluated = CliRunner().invoke(main, ["eval", "--run", str(out), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    for name in ("runs.parquet", "summary.md", "pareto_test.png"):
        assert (out / name).exists(), name
    report = json.loads(evaluated.output)
    assert len(report["policies"]) == 2 and report["cost_unit"] == "B params"
    names = {b["name"] for b in report["baselines"]}
    assert {
        "single: always-right",
        "round-robin x2",
        "random routing (policy's lengths)",
        "oracle: best expert per question",
    } <= names
    refused = CliRunner().invoke(main, ["train", "--cache", str(cache), "--seeds", "2"])
    assert refused.exit_code == 2 and "trains one PPO policy" in refused.output


def test_stepwise_gymnasium_path_runs_the_same_ppo(cache: Path, tmp_path: Path) -> None:
    from dersim.trainer.stepwise import train_stepwise

    run = trainer(cache, tmp_path / "slow", seeds=1, steps=8 * 640)
    state, curves, rate = train_stepwise(run, show_progress=False)
    assert rate > 0 and curves["chunk"].max() == 7
    assert curves["return"][-1] > curves["return"][0], (
        "the policy improves on the reference env too"
    )
    evaluation = evaluate(run, run.kept_params(state), "test")
    assert evaluation.policies.height == 1 and evaluation.policies["calls"][0] >= 1
