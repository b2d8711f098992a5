"""Deployable evaluation: the final reward makes stopping learnable, the cost scale makes alpha
portable, the val split is never trained on, costs are reported in the run's unit, and exactly the
rows that read the reference say so."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from dersim.builder.build import build_cache
from dersim.cache.schema import QUESTIONS, STATES, STATUS_OK, TRANSITIONS
from dersim.cli import main
from dersim.env.der_env import make_params, reset_to, transition
from dersim.env.judge import fit_judge
from dersim.env.reference import DERGymEnv
from dersim.env.tables import EnvSpec, load_tables, split_roots
from dersim.recipe import load_recipe
from dersim.trainer.ppo import PPOConfig
from dersim.trainer.run import GridTrainer

from conftest import STRATEGYQA, episode_return

SMALL = PPOConfig(
    num_envs=8, num_steps=8, update_epochs=2, num_minibatches=2, hidden=32, updates_per_chunk=10
)


def recipe_text(sizes: tuple[float, float, float] = (0.5, 1.0, 3.0), usd: bool = True) -> str:
    """Three synthetic experts; the two cheap ones are always wrong and the dearest one is always
    right, so one call of it, then STOP, is optimal under the final reward with a positive cost
    weight."""
    prices = ((0.1, 0.2), (0.5, 1.0), (3.0, 6.0)) if usd else ((0, 0),) * 3
    experts = "".join(
        f"""
[[experts]]
name = "{name}"
backend = "synthetic"
params_b = {size}
usd_per_mtok_in = {usd_in}
usd_per_mtok_out = {usd_out}
options = {{ skill = {skill}, refine = {refine} }}
"""
        for name, size, (usd_in, usd_out), skill, refine in zip(
            ("wrong", "also-wrong", "always-right"),
            sizes,
            prices,
            (0.0, 0.0, 1.0),
            (0.0, 0.0, 1.0),
            strict=True,
        )
    )
    return f"""
name = "stop-early"
[dataset]
source = "bigbench"
task = "strategyqa"
path = "{STRATEGYQA}"
train = 20
test = 8
[build]
depth = 3
[metrics]
names = ["accuracy_yesno", "token_f1"]
[embedding]
model = "hashing"
dim = 32
{experts}"""


def build(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "r.toml").write_text(text, encoding="utf-8")
    build_cache(load_recipe(directory / "r.toml"), directory / "cache", show_progress=False)
    return directory / "cache"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("deployable"), recipe_text())


def best_episode_return(env: DERGymEnv, question: int) -> float:
    """The best return over every action sequence (calls, optionally ending with STOP) on a
    question."""
    best = -np.inf
    for length in range(1, env.env_spec.t_max + 1):
        for route in itertools.product(range(env.n_experts), repeat=length):
            for actions in ([*route, env.stop_action], list(route)):
                best = max(best, episode_return(env, question, actions))
    return best


@pytest.mark.parametrize("algo", ["fqi", "exact-pg"])
def test_learned_stop_under_the_final_reward_stops_early_and_is_near_optimal(
    cache: Path, tmp_path: Path, algo: str
) -> None:
    # The defaults (gamma = 0): stopping right is worth only the 0.05 that a cheap extra call costs.
    spec = EnvSpec(metric="accuracy", p0=0.5, alpha=0.3, val_fraction=0.0, last_action_obs=True)
    run = GridTrainer.from_grid(
        cache, tmp_path / "run", spec, SMALL, {}, 2, 40 * 640, keep="last", algo=algo
    )
    state, _ = run.train(show_progress=False)
    env = DERGymEnv(cache, spec)
    optimum = np.mean([best_episode_return(env, q) for q in range(len(env.roots))])
    greedy = run.greedy(run.kept_params(state), run.env_params, run.tables.roots)
    for policy in range(len(run.policies)):
        assert greedy["calls"][policy].mean() < env.env_spec.t_max, "the policy stops before T_max"
        achieved = greedy["return"][policy].mean()
        assert achieved >= 0.95 * optimum, (policy, achieved, optimum)


def test_val_questions_are_never_trained_on(cache: Path, tmp_path: Path) -> None:
    run = GridTrainer.from_grid(
        cache, tmp_path / "run", EnvSpec(metric="accuracy", p0=0.5), SMALL, {}, 1, 640
    )
    questions = pl.read_parquet(cache / QUESTIONS)
    train_roots = set(
        np.asarray(run.env_params.roots).tolist()
    )  # the only questions episodes start from
    val_roots = set(run.val_roots.tolist())
    test_roots = set(split_roots(run.tables, cache, "test")[0].tolist())
    cache_train = set(questions.filter(pl.col("split") == "train")["root_state_id"].to_list())
    assert (
        val_roots
        and train_roots
        and not train_roots & val_roots
        and not (train_roots | val_roots) & test_roots
    )
    assert train_roots | val_roots == cache_train
    assert len(val_roots) == round(0.2 * len(cache_train))
    other_seed = load_tables(cache, EnvSpec(metric="accuracy", split="val", split_seed=1))
    assert set(other_seed.roots.tolist()) != val_roots, "the split seed picks another val set"


def test_judge_is_fitted_on_train_answer_states_only(cache: Path) -> None:
    tables = load_tables(cache, EnvSpec(metric="token_f1", p0=0.5, terminator="judge"))
    states = pl.read_parquet(cache / STATES)
    train_ids = [tables.question_ids[i] for i in range(len(tables.question_ids))]
    rows = states.filter(pl.col("question_id").is_in(train_ids) & (pl.col("depth") > 0))
    expected = fit_judge(
        np.stack(rows["embedding"].to_numpy()), rows["token_f1"].to_numpy(), 0.5, "token_f1"
    )
    assert tables.judge == expected and tables.judge.fitted_on == rows.height
    np.testing.assert_allclose(
        tables.judge_prob, expected.prob(np.stack(states["embedding"].to_numpy()))
    )


def test_auto_cost_scale_is_the_dearest_experts_mean_train_call_and_makes_alpha_portable(
    tmp_path: Path,
) -> None:
    small = build(tmp_path / "small", recipe_text())
    large = build(tmp_path / "large", recipe_text(sizes=(500.0, 1000.0, 3000.0)))
    calls = (
        pl.read_parquet(small / TRANSITIONS)
        .filter(pl.col("status") == STATUS_OK)
        .join(pl.read_parquet(small / STATES).select("state_id", "question_id"), on="state_id")
        .join(pl.read_parquet(small / QUESTIONS).select("question_id", "split"), on="question_id")
        .filter(pl.col("split") == "train")
    )
    usd = calls.group_by("expert_id").agg(pl.col("cost_usd").mean())["cost_usd"].max()
    assert load_tables(
        small, EnvSpec(cost_mode="usd", metric="accuracy")
    ).cost_scale == pytest.approx(usd, rel=1e-5)
    assert load_tables(small, EnvSpec(metric="accuracy")).cost_scale == pytest.approx(3.0)
    info = CliRunner().invoke(main, ["cache", "info", str(small), "--json"])
    assert info.exit_code == 0, info.output
    printed = json.loads(info.stdout)["cost_scale"]
    assert printed["params"] == pytest.approx(3.0) and printed["usd"] == pytest.approx(
        usd, rel=1e-5
    )
    rewards = []
    for cache, scale in ((small, "auto"), (large, "auto"), (large, 1.0)):
        params = make_params(
            load_tables(cache, EnvSpec(metric="accuracy", alpha=0.5, cost_scale=scale))
        )
        _, start = reset_to(params, 0)
        rewards.append([float(transition(start, expert, params)[1]) for expert in range(3)])
    np.testing.assert_allclose(
        rewards[0], rewards[1], rtol=1e-6, err_msg="auto scale: alpha means the same"
    )
    assert rewards[2][2] < rewards[1][2] - 100, "raw units: 3,000 B params at alpha 0.5 cost 1,500"


def train_and_eval(cache: Path, out: Path, *extra: str) -> dict:
    trained = CliRunner().invoke(
        main,
        [
            "train",
            "--vectorized",
            "--cache",
            str(cache),
            "--seeds",
            "1",
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
            *extra,
        ],
    )
    assert trained.exit_code == 0, trained.output
    evaluated = CliRunner().invoke(main, ["eval", "--run", str(out), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    return json.loads(evaluated.output)


def test_eval_reports_costs_in_the_runs_unit(cache: Path, tmp_path: Path) -> None:
    report = train_and_eval(cache, tmp_path / "usd", "--cost-mode", "usd")
    assert report["cost_mode"] == "usd" and report["cost_unit"] == "USD"
    rows = report["policies"] + report["baselines"]
    assert all(row["cost"] > 0 for row in rows)
    single = {
        row["name"]: row["cost"]
        for row in report["baselines"]
        if row["name"].startswith("single: ")
    }
    assert single["single: always-right"] > single["single: also-wrong"] > single["single: wrong"]
    summary = (tmp_path / "usd" / "summary.md").read_text(encoding="utf-8")
    assert "cost (USD/question)" in summary


def test_uses_reference_marks_exactly_the_oracle_rows(cache: Path, tmp_path: Path) -> None:
    report = train_and_eval(
        cache, tmp_path / "mixed", "--grid", "terminator=oracle,learned,judge,none"
    )
    for row in report["policies"]:
        assert row["uses_reference"] == (row["terminator"] == "oracle"), row["terminator"]
    for row in report["baselines"]:
        assert row["uses_reference"] == ("oracle" in row["name"]), row["name"]
    best = next(row for row in report["policies"] if row["policy"] == report["best_policy"])
    assert not best["uses_reference"] and report["chosen_on"] == "val"
    assert set(report["judge_accuracy"]) == {"val", "test"}
