"""The JAX DER env against its plain Gymnasium twin (`dersim.env.reference`, the ground truth).

Both envs are driven with the same actions over the same caches and must agree on every reward,
done, state id, t and observation, and on every episode's outcome. Also: `step` compiles once for
all values of its arguments; vmapping over envs and over a batch of `EnvParams` gives the
unbatched results; every `EnvError` is one line naming the option; `load_tables` reads a
200k-state cache exactly as the Parquet files hold it.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dersim.builder.build import build_cache
from dersim.cache.schema import (
    QUESTIONS,
    STATES,
    STATUS_OK,
    TRANSITIONS,
)
from dersim.env import COST_MODES, REWARDS, TERMINATORS
from dersim.env.der_env import EnvState, make_params, reset_to, step, transition
from dersim.env.reference import DERGymEnv
from dersim.env.tables import EnvError, EnvSpec, load_tables
from dersim.errors import DersimError
from dersim.importers.common import import_answer_set
from dersim.importers.long import LongColumns, read_long
from dersim.importers.routerbench import read_routerbench
from dersim.recipe import EmbeddingSpec, load_recipe

from conftest import REPO, synthetic_recipe_text
from random_cache import write_random_cache

# Compiled once for the whole module; jit's cache keys on shapes and static fields only.
TRANSITION = jax.jit(transition)
STEP = jax.jit(step)
RESET_TO = jax.jit(reset_to)
REAL_CACHE = REPO / "cache" / "strategyqa"
PRICES = (
    ("small", 0.1, 0.3, 0.2),
    ("medium", 0.4, 1.2, 0.5),
    ("large", 2.0, 6.0, 1.5),
)  # usd in/out, latency ms


# ---------------------------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------------------------


def priced_recipe_text(**kwargs) -> str:
    """conftest's synthetic recipe with per-expert token prices and latencies (so that the usd and
    latency cost modes are not all zero)."""
    head, *blocks = synthetic_recipe_text(latency_ms=0.0, **kwargs).split("[[experts]]")
    out = [head]
    for block, (name, usd_in, usd_out, latency) in zip(blocks, PRICES, strict=True):
        assert f'name = "{name}"' in block
        block = block.replace("latency_ms = 0.0", f"latency_ms = {latency}")
        block = block.replace(
            'backend = "synthetic"\n',
            f'backend = "synthetic"\nusd_per_mtok_in = {usd_in}\nusd_per_mtok_out = {usd_out}\n',
        )
        out.append(block)
    return "[[experts]]".join(out)


def build_synthetic(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recipe.toml").write_text(text, encoding="utf-8")
    build_cache(load_recipe(directory / "recipe.toml"), directory / "cache", show_progress=False)
    return directory / "cache"


def write_long_jsonl(
    path: Path, *, n_questions: int = 12, seed: int = 5, params: bool = True
) -> dict:
    """A tiny RouterBench-like long table (one row per question x model) and its params_b."""
    rng = np.random.default_rng(seed)
    models = {"mistral-7b": 7.0, "llama-70b": 70.0, "gpt-3.5": 20.0, "yi-34b": 34.0}
    rows = []
    for q in range(n_questions):
        for m, name in enumerate(models):
            score = float(rng.random() < 0.5) if m % 2 else round(float(rng.random()), 4)
            rows.append(
                {
                    "sample_id": f"mmlu.{q}",
                    "prompt": f"Question {q}: which option?",
                    "model_name": name,
                    "model_response": f"Option {'ABCD'[(q + m) % 4]} from {name}",
                    "performance": score,
                    "cost": float(rng.random() * 1e-3),
                    "split": "test" if q % 3 == 0 else "train",
                    "in_tok": int(rng.integers(10, 200)),
                    "out_tok": int(rng.integers(1, 50)),
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return models if params else {}


def build_routerbench(directory: Path) -> Path:
    """A real RouterBench import (winogrande, 24 questions, 11 models, routes of up to 2 calls)."""
    data = REPO.parent / "shared" / "data" / "routerbench"
    answers = read_routerbench([data / "winogrande_train.csv", data / "winogrande_test.csv"])
    import_answer_set(
        answers,
        directory / "cache",
        embedding=EmbeddingSpec(model="hashing", dim=16),
        limit=24,
        max_calls=2,
    )
    return directory / "cache"


def build_depth1(directory: Path) -> Path:
    """A depth-1 cache imported from a long-format JSONL with tokens, prices and model sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    params_b = write_long_jsonl(directory / "long.jsonl")
    columns = LongColumns(
        question_id="sample_id",
        question="prompt",
        model="model_name",
        answer="model_response",
        score="performance",
        cost="cost",
        split="split",
        prompt_tokens="in_tok",
        completion_tokens="out_tok",
    )
    answers = read_long(directory / "long.jsonl", columns, score_name="accuracy", params_b=params_b)
    import_answer_set(
        answers, directory / "cache", embedding=EmbeddingSpec(model="hashing", dim=16)
    )
    return directory / "cache"


CACHE_NAMES = [
    "synthetic",
    "strategyqa" if (REAL_CACHE / "manifest.json").exists() else "synthetic_b",
    "random_dag",
    "depth1",
    "routerbench",
]


@dataclass
class CacheInfo:
    name: str
    path: Path
    depth: int
    n_experts: int
    metrics: list[str]
    nonroot_scores: dict[str, np.ndarray] = field(default_factory=dict)
    cost_modes: tuple[str, ...] = COST_MODES


@pytest.fixture(scope="module", params=CACHE_NAMES)
def cache(request, tmp_path_factory) -> CacheInfo:
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    if name == "synthetic":
        path = build_synthetic(tmp, priced_recipe_text(depth=3))
    elif (
        name == "synthetic_b"
    ):  # other sizes and seeds; stands in for the real cache until it is built
        path = build_synthetic(
            tmp, priced_recipe_text(depth=2, train=6, test=3).replace("seed = 3", "seed = 11")
        )
    elif name == "strategyqa":
        path = REAL_CACHE
    elif name == "routerbench":
        path = build_routerbench(tmp)
    elif name == "random_dag":
        path = tmp / "cache"
        write_random_cache(path, n_questions=14, n_experts=3, depth=4, dim=8, seed=1)
    else:
        path = build_depth1(tmp)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    states = pl.read_parquet(path / STATES)
    nonroot = states.filter(pl.col("depth") > 0)
    has_params = all(e.get("params_b") is not None for e in manifest["experts"])
    calls = pl.read_parquet(path / TRANSITIONS)
    recorded = {
        "params": has_params,
        "tokens": (calls["prompt_tokens"] + calls["completion_tokens"]).sum() > 0,
        "latency": calls["latency_s"].sum() > 0,
        "latency_norm": calls["latency_s"].sum() > 0,
        "usd": calls["cost_usd"].sum() > 0,
    }
    return CacheInfo(
        name,
        path,
        int(manifest["depth"]),
        len(manifest["experts"]),
        list(manifest["metric_columns"]),
        {m: nonroot[m].to_numpy().astype(np.float32) for m in manifest["metric_columns"]},
        tuple(m for m in COST_MODES if recorded[m]),
    )


@functools.lru_cache(maxsize=16)
def tables_for(
    path: Path,
    split: str,
    metric: str,
    cost_mode: str,
    cost_scale: str | float,
    last_action_obs: bool,
    embedding_dim: int | None,
    val_fraction: float,
    judge_p0: float | None,
):
    """The JAX env's tables (the judge, fitted at `judge_p0`, only for judge configs)."""
    spec = EnvSpec(
        split=split,
        metric=metric,
        cost_mode=cost_mode,
        cost_scale=cost_scale,
        last_action_obs=last_action_obs,
        embedding_dim=embedding_dim,
        val_fraction=val_fraction,
        p0=0.5 if judge_p0 is None else judge_p0,
    )
    return load_tables(path, spec, with_judge=judge_p0 is not None)


# ---------------------------------------------------------------------------------------------
# Driving both envs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    split: str
    metric: str
    cost_mode: str
    t_max: int
    terminator: str
    alpha: float
    beta: float
    gamma: float
    p0: float
    last_action_obs: bool
    embedding_dim: int | None = None
    reward: str = "paper"
    cost_scale: str | float = "auto"
    judge_error: float = 0.0
    judge_threshold: float = 0.5
    val_fraction: float = 0.2

    def spec(self) -> EnvSpec:
        return EnvSpec(**self.__dict__)


@dataclass
class Seen:
    """What the episodes exercised (to check that the branches were covered)."""

    steps: int = 0
    episodes: int = 0
    success: int = 0
    failure: int = 0
    stops: int = 0
    early: int = 0  # oracle episodes that ended before T_max
    judged: int = 0  # judge episodes that ended before T_max
    flipped: int = 0  # noisy-oracle episodes that ended before T_max below p0 (a flipped decision)
    at_limit: int = 0


def assert_state_equal(a: EnvState, b: EnvState, what: str) -> None:
    for name in ("question", "state", "t", "last_action"):
        assert int(getattr(a, name)) == int(getattr(b, name)), f"{what}: {name}"
    for name in ("prev_score", "cost", "ret"):
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-6, err_msg=f"{what}: {name}"
        )


def assert_outcome(jax_outcome: dict, info: dict, what: str) -> None:
    assert int(jax_outcome["question"]) == info["question"], what
    assert int(jax_outcome["calls"]) == info["calls"], what
    assert bool(jax_outcome["success"]) == info["success"], what
    for key in ("final_score", "cost", "return"):
        np.testing.assert_allclose(
            jax_outcome[key], info[key], rtol=1e-5, atol=1e-5, err_msg=f"{what}: {key}"
        )


def run_both(
    path: Path, config: Config, next_action, next_question, n_steps: int, seen: Seen | None = None
) -> None:
    """Step the JAX env (`transition`, and `step` with its auto-reset) and the reference env with
    the same actions; reset both to the same question after each episode."""
    seen = seen or Seen()
    tables = tables_for(
        path,
        config.split,
        config.metric,
        config.cost_mode,
        config.cost_scale,
        config.last_action_obs,
        config.embedding_dim,
        config.val_fraction,
        config.p0 if config.terminator == "judge" else None,
    )
    params = make_params(
        tables,
        alpha=config.alpha,
        beta=config.beta,
        gamma=config.gamma,
        p0=config.p0,
        t_max=config.t_max,
        terminator=config.terminator,
        reward=config.reward,
        judge_error=config.judge_error,
        judge_threshold=config.judge_threshold,
    )
    env = DERGymEnv(path, config.spec())
    assert env.roots == tables.roots.tolist() and tuple(env.question_ids) == tables.question_ids
    assert env.observation_space.shape == (params.obs_dim,)
    n_questions = len(env.roots)

    def start(question: int) -> EnvState:
        obs_j, state = jax.device_get(RESET_TO(params, np.int32(question)))
        obs_g, info = env.reset(options={"question": question})
        assert info == {"question": question, "state": int(state.state)}
        np.testing.assert_allclose(obs_j, obs_g, atol=1e-6, err_msg=f"reset to question {question}")
        return state

    state = start(next_question(n_questions))
    for i in range(n_steps):
        action = next_action(env.action_space.n)
        what = f"step {i}, action {action}, {config}"
        result = jax.device_get(
            (
                TRANSITION(state, np.int32(action), params),
                STEP(jax.random.key(i), state, np.int32(action), params),
            )
        )
        (after, reward, done, outcome), (obs_s, state_s, reward_s, done_s, outcome_s) = result
        obs_g, reward_g, terminated, truncated, info = env.step(action)
        seen.steps += 1
        assert truncated is False
        assert bool(done) == terminated, what
        np.testing.assert_allclose(reward, reward_g, rtol=1e-5, atol=1e-5, err_msg=what)
        assert int(after.state) == info["state"] and int(after.t) == info["t"], what
        # `step` is `transition` plus the auto-reset.
        np.testing.assert_allclose(reward_s, reward, rtol=1e-6, atol=1e-6, err_msg=what)
        assert bool(done_s) == bool(done), what
        chex.assert_trees_all_close(outcome_s, outcome, rtol=1e-6, atol=1e-6)
        if not done:
            assert_state_equal(state_s, after, what)
            np.testing.assert_allclose(obs_s, obs_g, atol=1e-6, err_msg=what)
            state = state_s
            continue
        assert_outcome(outcome, info, what)
        np.testing.assert_allclose(info["return"], float(after.ret), rtol=1e-5, atol=1e-5)
        obs_r, fresh = jax.device_get(RESET_TO(params, state_s.question))
        assert_state_equal(state_s, fresh, f"{what}: auto-reset")
        np.testing.assert_allclose(
            obs_s, obs_r, atol=1e-6, err_msg=f"{what}: auto-reset observation"
        )
        seen.episodes += 1
        seen.success += info["success"]
        seen.failure += not info["success"]
        seen.stops += action == env.n_experts
        ended_early = info["calls"] < config.t_max and action != env.n_experts
        seen.early += config.terminator == "oracle" and ended_early
        seen.judged += config.terminator == "judge" and ended_early
        seen.flipped += config.terminator == "oracle" and ended_early and not info["success"]
        seen.at_limit += info["calls"] == config.t_max and action != env.n_experts
        state = start(next_question(n_questions))


@st.composite
def configs(draw, cache: CacheInfo) -> Config:
    metric = draw(st.sampled_from(cache.metrics))
    scores = cache.nonroot_scores[metric]
    p0 = draw(
        st.one_of(
            st.floats(0.1, 0.9).map(lambda q: float(np.quantile(scores, q))),
            st.sampled_from(sorted(set(scores.tolist()))),
        )
    )  # exactly a score: P == p0
    val_fraction = draw(st.sampled_from([0.0, 0.2, 0.5]))
    return Config(
        split=draw(
            st.sampled_from(["train", "test", "val"] if val_fraction else ["train", "test"])
        ),
        metric=metric,
        cost_mode=draw(st.sampled_from(cache.cost_modes)),
        t_max=draw(st.integers(1, cache.depth)),
        terminator=draw(st.sampled_from(TERMINATORS)),
        alpha=draw(st.floats(0.0, 0.5)),
        beta=draw(st.floats(0.0, 10.0)),
        gamma=draw(st.floats(0.0, 5.0)),
        p0=p0,
        last_action_obs=draw(st.booleans()),
        embedding_dim=draw(st.sampled_from([None, 3])),
        reward=draw(st.sampled_from(REWARDS)),
        cost_scale=draw(st.sampled_from(["auto", 1.0, 0.37])),
        judge_error=draw(st.sampled_from([0.0, 0.3, 1.0])),
        judge_threshold=draw(st.floats(0.05, 0.95)),
        val_fraction=val_fraction,
    )


# ---------------------------------------------------------------------------------------------
# Equivalence
# ---------------------------------------------------------------------------------------------


@settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data())
def test_same_actions_same_rewards_states_and_outcomes(cache: CacheInfo, data) -> None:
    config = data.draw(configs(cache), label="config")
    n_steps = data.draw(st.integers(1, 30), label="steps")
    run_both(
        cache.path,
        config,
        next_action=lambda n: data.draw(st.integers(0, n - 1), label="action"),
        next_question=lambda n: data.draw(st.integers(0, n - 1), label="question"),
        n_steps=n_steps,
    )


def test_long_rollouts_cover_every_branch(cache: CacheInfo) -> None:
    """Seeded random rollouts through every terminator, reward and T_max: both outcomes, STOP,
    oracle early stops (true and flipped), judge stops and T_max ends all happen, and both envs
    agree."""
    rng = np.random.default_rng(0)
    seen = Seen()
    metric = "token_f1" if "token_f1" in cache.metrics else cache.metrics[0]
    p0 = float(np.quantile(cache.nonroot_scores[metric], 0.6))
    combos = [
        (term, reward, t)
        for term in TERMINATORS
        for reward in REWARDS
        for t in range(1, cache.depth + 1)
    ]
    for i, (terminator, reward, t_max) in enumerate(combos):
        config = Config(
            split=("train", "test", "all", "val")[i % 4],
            metric=metric,
            cost_mode=cache.cost_modes[i % len(cache.cost_modes)],
            t_max=t_max,
            terminator=terminator,
            alpha=0.05,
            beta=2.0,
            gamma=1.5,
            p0=p0,
            last_action_obs=bool(i % 2),
            embedding_dim=3 if i % 3 == 1 else None,
            reward=reward,
            cost_scale=("auto", 1.0)[i % 2],
            judge_error=(0.0, 0.25)[(i // 2) % 2],
            judge_threshold=0.3,
        )
        run_both(
            cache.path,
            config,
            next_action=lambda n: int(rng.integers(n)),
            next_question=lambda n: int(rng.integers(n)),
            n_steps=60,
            seen=seen,
        )
    assert seen.success and seen.failure and seen.stops and seen.at_limit, seen
    if cache.depth > 1:  # at depth 1 every episode is one call
        assert seen.early and seen.judged and seen.flipped, seen


# ---------------------------------------------------------------------------------------------
# Compilation and batching
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    return build_synthetic(tmp_path_factory.mktemp("small"), priced_recipe_text(depth=3))


def test_step_compiles_once_for_all_values(small_cache: Path) -> None:
    tables = load_tables(small_cache, EnvSpec(metric="token_f1", p0=0.4), with_judge=True)
    traces = []

    @chex.assert_max_traces(n=1)
    def counted(key, state, action, params):
        traces.append(1)  # runs only while tracing
        return step(key, state, action, params)

    jitted = jax.jit(counted)
    rng = np.random.default_rng(0)
    n_actions = tables.next_state.shape[1] + 1
    _, state = reset_to(make_params(tables), 0)
    for i in range(60):
        terminator = TERMINATORS[i % len(TERMINATORS)]
        params = make_params(
            tables,
            alpha=float(rng.random()),
            beta=float(rng.random() * 5),
            gamma=float(rng.random() * 3),
            p0=0.4 if terminator == "judge" else float(rng.random()),
            t_max=int(rng.integers(1, tables.max_depth + 1)),
            terminator=terminator,
            reward=REWARDS[i % 2],
            judge_error=float(rng.random()),
            judge_threshold=float(rng.random()),
        )
        _, state, reward, done, _ = jitted(
            jax.random.key(i), state, np.int32(rng.integers(n_actions)), params
        )
    jax.block_until_ready(reward)
    assert len(traces) == 1


def test_vmap_over_envs_and_params_matches_unbatched_calls(small_cache: Path) -> None:
    tables = load_tables(
        small_cache, EnvSpec(metric="token_f1", last_action_obs=True, p0=0.45), with_judge=True
    )
    settings_grid = [
        dict(alpha=0.001, p0=0.3, t_max=1, terminator="oracle"),
        dict(alpha=0.2, p0=0.6, t_max=3, terminator="learned", reward="paper"),
        dict(alpha=0.05, p0=0.45, t_max=2, terminator="none"),
        dict(alpha=0.5, p0=0.9, t_max=3, terminator="oracle", judge_error=0.4),
        dict(alpha=0.1, p0=0.45, t_max=3, terminator="judge", judge_threshold=0.3, reward="final"),
    ]
    plist = [make_params(tables, **s) for s in settings_grid]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs) if jnp.ndim(xs[0]) == 0 else xs[0], *plist)
    axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) == 0 else None, plist[0])
    n_params, n_envs, n_steps = len(plist), 6, 10
    batched_reset = jax.jit(jax.vmap(jax.vmap(reset_to, in_axes=(None, 0)), in_axes=(axes, 0)))
    batched_step = jax.jit(
        jax.vmap(jax.vmap(step, in_axes=(0, 0, 0, None)), in_axes=(0, 0, 0, axes))
    )

    rng = np.random.default_rng(1)
    questions = rng.integers(len(tables.roots), size=(n_params, n_envs)).astype(np.int32)
    obs, states = batched_reset(stacked, questions)
    host_states = jax.device_get(states)
    for p in range(n_params):
        for e in range(n_envs):
            single_obs, single = jax.device_get(RESET_TO(plist[p], questions[p, e]))
            assert_state_equal(
                jax.tree.map(lambda x, p=p, e=e: x[p, e], host_states), single, "reset"
            )
            np.testing.assert_allclose(obs[p, e], single_obs, atol=1e-6)
    dones = 0
    for i in range(n_steps):
        keys = jax.random.split(jax.random.key(i), n_params * n_envs).reshape(n_params, n_envs)
        actions = rng.integers(tables.next_state.shape[1] + 1, size=(n_params, n_envs)).astype(
            np.int32
        )
        out = jax.device_get(batched_step(keys, states, actions, stacked))
        for p in range(n_params):
            for e in range(n_envs):
                before = jax.tree.map(lambda x, p=p, e=e: x[p, e], host_states)
                single = jax.device_get(STEP(keys[p, e], before, actions[p, e], plist[p]))
                picked = jax.tree.map(lambda x, p=p, e=e: x[p, e], out)
                np.testing.assert_allclose(picked[0], single[0], atol=1e-6)
                assert_state_equal(picked[1], single[1], f"step {i}, params {p}, env {e}")
                np.testing.assert_allclose(picked[2], single[2], rtol=1e-6, atol=1e-6)
                assert bool(picked[3]) == bool(single[3])
                chex.assert_trees_all_close(picked[4], single[4], rtol=1e-6, atol=1e-6)
        dones += int(out[3].sum())
        states, host_states = jax.device_put(out[1]), out[1]
    assert dones > 0


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def error_caches(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("errors")
    caches = {
        "good": build_synthetic(tmp / "good", priced_recipe_text(depth=2)),
        "failed": build_synthetic(tmp / "failed", priced_recipe_text(depth=2, fail_rate=0.3)),
    }
    write_random_cache(
        tmp / "no_test", n_questions=5, n_experts=2, depth=1, dim=4, seed=0, test_fraction=0.0
    )
    caches["no_test"] = tmp / "no_test"
    params_b = write_long_jsonl(tmp / "long.jsonl", params=False)
    columns = LongColumns(
        question_id="sample_id",
        question="prompt",
        model="model_name",
        answer="model_response",
        score="performance",
        cost="cost",
        split="split",
    )
    answers = read_long(tmp / "long.jsonl", columns, params_b=params_b)
    import_answer_set(answers, tmp / "imported", embedding=EmbeddingSpec(model="hashing", dim=8))
    caches["no_params"] = tmp / "imported"
    return caches


ERROR_CASES = [
    ("good", EnvSpec(metric="bertscore_f9"), r"metric 'bertscore_f9'"),
    ("good", EnvSpec(t_max=3), r"T_max = 3 .*depth 2"),
    ("good", EnvSpec(t_max=0), r"T_max = 0"),
    ("good", EnvSpec(cost_mode="watts"), r"cost mode 'watts'"),
    ("good", EnvSpec(terminator="never"), r"terminator 'never'"),
    ("good", EnvSpec(split="validation"), r"split 'validation'"),
    ("good", EnvSpec(reward="bonus"), r"reward 'bonus'"),
    ("good", EnvSpec(p0=2.0), r"--p0 2.0: expected a finite number within \[0, 1\]"),
    ("good", EnvSpec(alpha=float("nan")), r"--alpha nan: expected a finite number"),
    ("good", EnvSpec(judge_error=1.5), r"--judge-error 1.5"),
    ("good", EnvSpec(split="val", val_fraction=0.0), r"no 'val' questions \(--val-fraction is 0\)"),
    ("good", EnvSpec(cost_scale=-1.0), r"--cost-scale -1.0"),
    ("no_test", EnvSpec(split="test"), r"no 'test' questions"),
    ("failed", EnvSpec(), r"states reachable within T_max = 2 lack some expert's transition"),
    ("no_params", EnvSpec(cost_mode="params"), r"params_b.*cost-mode"),
    ("no_params", EnvSpec(cost_mode="latency"), r"every 'latency' cost on the train split is zero"),
]


@pytest.mark.parametrize(
    ("cache_name", "spec", "pattern"), ERROR_CASES, ids=[p for _, _, p in ERROR_CASES]
)
def test_env_errors_are_one_line_and_name_the_option(
    error_caches, cache_name: str, spec: EnvSpec, pattern: str
) -> None:
    messages = []
    for make in (load_tables, DERGymEnv):
        with pytest.raises(DersimError, match=pattern) as caught:
            make(error_caches[cache_name], spec)
        messages.append(str(caught.value))
        assert "\n" not in messages[-1]
    assert messages[0] == messages[1]


# ---------------------------------------------------------------------------------------------
# The Gymnasium API of the reference env
# ---------------------------------------------------------------------------------------------


def test_reference_env_follows_the_gymnasium_api(small_cache: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # infinite Box bounds, no render_fps: as designed
        check_env(DERGymEnv(small_cache, EnvSpec(metric="token_f1", terminator="learned", p0=0.4)))
        check_env(
            DERGymEnv(
                small_cache, EnvSpec(metric="token_f1", last_action_obs=True, terminator="oracle")
            )
        )
    oracle = DERGymEnv(small_cache, EnvSpec(metric="token_f1", terminator="oracle"))
    learned = DERGymEnv(
        small_cache, EnvSpec(metric="token_f1", terminator="learned"), render_mode="ansi"
    )
    assert (oracle.action_space.n, learned.action_space.n) == (3, 4)
    with pytest.raises(RuntimeError, match="reset"):
        oracle.step(0)
    oracle.reset(seed=0)
    for bad in (3, -1, 1.0, True, "1", np.array([1])):
        with pytest.raises(
            ValueError, match=re.escape(repr(bad) if not isinstance(bad, int) else str(bad))
        ):
            oracle.step(bad)
    with pytest.raises(ValueError, match="STOP"):
        oracle.step(3)
    with pytest.raises(ValueError, match="question"):
        oracle.reset(options={"question": len(oracle.roots)})
    learned.reset(options={"question": 1})
    assert "no answer yet" in learned.render()
    obs, reward, terminated, truncated, info = learned.step(np.int64(2))
    assert learned.answers[info["state"]] in learned.render()
    with pytest.raises(ValueError, match="invalid action 4"):
        learned.step(4)
    obs, reward, terminated, truncated, info = learned.step(3)  # STOP
    bonus = learned.env_spec.gamma if info["success"] else -learned.env_spec.gamma
    assert learned.env_spec.reward == "final", (
        "under the final reward STOP pays the answer's score too"
    )
    assert (
        terminated
        and not truncated
        and info["calls"] == 1
        and reward == pytest.approx(bonus + info["final_score"])
    )
    with pytest.raises(RuntimeError, match="ended"):
        learned.step(0)


# ---------------------------------------------------------------------------------------------
# Loading a large cache
# ---------------------------------------------------------------------------------------------


def test_load_tables_reads_a_large_cache_exactly(tmp_path: Path) -> None:
    """A 212,500-state cache (2,500 questions x 4 experts x depth 3, generated with numpy) loads
    with every array equal to what the Parquet files hold; failed calls are -1 and only matter
    within T_max."""
    truth = write_random_cache(
        tmp_path / "big",
        n_questions=2500,
        n_experts=4,
        depth=3,
        dim=8,
        seed=7,
        failed_parents_at=2,
        n_failed=37,
    )
    n_states, n_experts = len(truth["depth"]), 4
    assert n_states >= 200_000
    states = pl.read_parquet(tmp_path / "big" / STATES)
    transitions = pl.read_parquet(tmp_path / "big" / TRANSITIONS)
    questions = pl.read_parquet(tmp_path / "big" / QUESTIONS)
    ok = transitions.filter(pl.col("status") == STATUS_OK)
    rows, cols = ok["state_id"].to_numpy(), ok["expert_id"].to_numpy()
    expected_next = np.full((n_states, n_experts), -1, np.int32)
    expected_next[rows, cols] = ok["next_state_id"].to_numpy()
    expected_next_truth = np.full((n_states, n_experts), -1, np.int32)
    expected_next_truth[truth["state"][truth["ok"]], truth["expert"][truth["ok"]]] = truth["next"][
        truth["ok"]
    ]
    np.testing.assert_array_equal(expected_next, expected_next_truth)

    medians = (
        ok.group_by("expert_id")
        .agg(pl.col("latency_s").median())
        .sort("expert_id")["latency_s"]
        .to_numpy()
    )
    per_call = {
        "params": truth["params_b"][cols],
        "tokens": (ok["prompt_tokens"].to_numpy() + ok["completion_tokens"].to_numpy()) / 1000,
        "latency": ok["latency_s"].to_numpy(),
        "latency_norm": ok["latency_s"].to_numpy() / medians[cols],
        "usd": ok["cost_usd"].to_numpy(),
    }
    for i, cost_mode in enumerate(COST_MODES):
        split = ("train", "test", "all")[i % 3]
        tables = load_tables(
            tmp_path / "big",
            EnvSpec(metric="token_f1", cost_mode=cost_mode, t_max=2, split=split, val_fraction=0.0),
        )
        assert (
            tables.next_state.shape == (n_states, n_experts) and tables.next_state.dtype == np.int32
        )
        np.testing.assert_array_equal(tables.next_state, expected_next)
        expected_cost = np.zeros((n_states, n_experts), np.float32)
        expected_cost[rows, cols] = per_call[cost_mode]
        np.testing.assert_allclose(tables.cost, expected_cost, rtol=1e-5, err_msg=cost_mode)
        assert tables.score.shape == (n_states,) and tables.score.dtype == np.float32
        np.testing.assert_array_equal(tables.score, states["token_f1"].to_numpy())
        np.testing.assert_array_equal(tables.score, truth["token_f1"])
        assert tables.embedding.shape == (n_states, 8) and tables.embedding.dtype == np.float32
        np.testing.assert_array_equal(tables.embedding, states["embedding"].to_numpy())
        np.testing.assert_array_equal(tables.embedding, truth["embedding"])
        np.testing.assert_array_equal(tables.depth, states["depth"].to_numpy())
        chosen = questions if split == "all" else questions.filter(pl.col("split") == split)
        np.testing.assert_array_equal(tables.roots, chosen["root_state_id"].to_numpy())
        assert tables.question_ids == tuple(chosen["question_id"].to_list())
        assert tables.max_depth == 3 and tables.spec.t_max == 2
    assert (tables.next_state == -1).sum() == 37 + (truth["depth"] == 3).sum() * n_experts
    failed_parents = len(set(truth["state"][~truth["ok"]].tolist()))
    with pytest.raises(EnvError, match=f"{failed_parents} states reachable within T_max = 3"):
        load_tables(tmp_path / "big", EnvSpec(metric="token_f1"))
