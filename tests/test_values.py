"""Exact values of any policy on a cache (`dersim.env.values`): hand-computed on a tiny graph, equal
to the Monte-Carlo returns of the JAX env and of the Gymnasium twin for every reward x terminator,
also for policies that observe their last action and on the derived views, and the same on a
question's own subgraph as on the whole cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dersim.env import REWARDS, TERMINATORS
from dersim.env.der_env import EnvParams, make_params, reset_to, transition
from dersim.env.reference import DERGymEnv
from dersim.env.subgraph import question_rows
from dersim.env.tables import EnvSpec, load_tables
from dersim.env.values import action_values, expected_return, occupancy, row_values, start_values
from dersim.trainer.policy import mask_actions

from random_cache import write_random_cache

SETTINGS = {
    "alpha": 0.4,
    "beta": 2.0,
    "gamma": 0.5,
    "p0": 0.5,
    "judge_error": 0.2,
    "judge_threshold": 0.5,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random graphs with self-loops (copying experts) and merged answers, 3 experts, depth 2."""
    out = tmp_path_factory.mktemp("values") / "cache"
    write_random_cache(
        out,
        n_questions=6,
        n_experts=3,
        depth=2,
        dim=8,
        seed=11,
        copy=0.3,
        merge=0.3,
        test_fraction=0.0,
    )
    return out


def spec_for(reward: str, terminator: str, **extra) -> EnvSpec:
    return EnvSpec(
        split="all",
        metric="token_f1",
        cost_scale=1.0,
        reward=reward,
        terminator=terminator,
        val_fraction=0.0,
        **SETTINGS,
        **extra,
    )


def random_policy(params: EnvParams, seed: int, with_last: bool = False) -> jax.Array:
    """Random action probabilities at every (t, s) (or (t, s, l)), masked as a policy masks them."""
    shape = (params.max_depth, params.next_state.shape[0]) + (
        (params.n_actions,) if with_last else ()
    )
    logits = jax.random.normal(jax.random.PRNGKey(seed), (*shape, params.n_actions))
    steps = jnp.arange(params.max_depth).reshape((-1,) + (1,) * (len(shape) - 1))
    return jax.nn.softmax(mask_actions(logits, params, steps), axis=-1)


def jax_returns(
    params: EnvParams, probs: jax.Array, episodes_per_question: int, seed: int
) -> np.ndarray:
    """Mean Monte-Carlo return of the JAX env per question, actions drawn from `probs`."""
    with_last = probs.ndim == 4

    def episode(key, question):
        _, state = reset_to(params, question)

        def body(carry, step_key):
            state, done, total = carry
            t = jnp.minimum(state.t, params.max_depth - 1)
            row = probs[t, state.state, state.last_action] if with_last else probs[t, state.state]
            action = jax.random.categorical(step_key, jnp.log(row))
            moved, reward, ended, _ = transition(state, action, params)
            state = jax.tree.map(lambda old, new: jnp.where(done, old, new), state, moved)
            return (state, done | ended, total + jnp.where(done, 0.0, reward)), None

        (_, _, total), _ = jax.lax.scan(
            body, (state, jnp.bool_(False), jnp.float32(0)), jax.random.split(key, params.max_depth)
        )
        return total

    n_questions = params.roots.shape[0]
    questions = jnp.tile(jnp.arange(n_questions), episodes_per_question)
    keys = jax.random.split(jax.random.PRNGKey(seed), questions.shape[0])
    returns = np.asarray(jax.jit(jax.vmap(episode))(keys, questions))
    return returns.reshape(episodes_per_question, n_questions)


def gym_returns(
    env: DERGymEnv, probs: np.ndarray, episodes_per_question: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    returns = np.zeros((episodes_per_question, len(env.roots)))
    n_actions = env.action_space.n
    for k, question in itertools.product(range(episodes_per_question), range(len(env.roots))):
        _, info = env.reset(options={"question": question})
        state, t, done, total = info["state"], 0, False, 0.0
        while not done:
            row = probs[min(t, env.max_depth - 1), state][:n_actions]
            _, reward, done, _, info = env.step(int(rng.choice(n_actions, p=row / row.sum())))
            state, t, total = info["state"], info["t"], total + reward
        returns[k, question] = total
    return returns


def close_to(samples: np.ndarray, exact: float) -> bool:
    """Within 4.5 standard errors of the mean (and a float32 rounding margin)."""
    error = samples.std() / np.sqrt(samples.size)
    return abs(samples.mean() - exact) <= 4.5 * error + 1e-5


def tiny_params(**settings) -> EnvParams:
    """One question: root 0 --e0--> 1 (score 0.6), --e1--> 2 (0.9); from 1: e0 -> 3 (0.5), e1 -> 4
    (1.0); from 2: e0 -> 5 (0.7), e1 -> 2 (a copy of itself). Costs C(e0) = 1, C(e1) = 3, cost scale
    3."""
    next_state = np.full((6, 2), -1, np.int32)
    next_state[0], next_state[1], next_state[2] = (1, 2), (3, 4), (5, 2)
    cost = np.tile(np.array([1.0, 3.0], np.float32), (6, 1))
    zeros = jnp.zeros(6, jnp.float32)
    values = {
        "alpha": 0.3,
        "beta": 2.0,
        "gamma": 0.0,
        "p0": 0.8,
        "t_max": 2,
        "terminator": 1,
        "reward": 1,
        "judge_error": 0.0,
        "judge_threshold": 0.5,
    } | settings
    return EnvParams(
        next_state=jnp.asarray(next_state),
        score=jnp.asarray([0, 0.6, 0.9, 0.5, 1.0, 0.7], jnp.float32),
        cost=jnp.asarray(cost),
        embedding=jnp.zeros((6, 1)),
        judge_prob=zeros,
        noise=zeros + 0.5,
        roots=jnp.asarray([0], jnp.int32),
        cost_scale=jnp.float32(3.0),
        **{
            k: jnp.asarray(v, jnp.int32 if k in ("t_max", "terminator", "reward") else jnp.float32)
            for k, v in values.items()
        },
        max_depth=2,
    )


def tiny_policy() -> jax.Array:
    """At the root: e0 with 0.25, e1 with 0.75. At t = 1: from 1, STOP or e1 half and half; from 2,
    e0."""
    probs = np.zeros((2, 6, 3), np.float32)
    probs[0, 0] = (0.25, 0.75, 0.0)
    probs[1, 1] = (0.0, 0.5, 0.5)
    probs[1, 2] = (1.0, 0.0, 0.0)
    return jnp.asarray(probs)


def test_hand_computed_values_on_a_tiny_graph() -> None:
    c0, c1 = 0.3 * 1 / 3, 0.3 * 3 / 3  # alpha * C / cost scale
    # Final reward, learned STOP, gamma 0: only the final answer's score is paid, every call costs.
    after_1 = 0.5 * 0.6 + 0.5 * (-c1 + 1.0)  # STOP keeps 0.6; e1 reaches state 4 (1.0) at T_max
    after_2 = -c0 + 0.7
    final = action_values(tiny_params(), tiny_policy())
    assert np.isclose(float(final.v[1][1]), after_1) and np.isclose(float(final.v[1][2]), after_2)
    assert np.isclose(
        float(final.v[0][0]), 0.25 * (-c0 + after_1) + 0.75 * (-c1 + after_2), atol=1e-6
    )
    assert np.isclose(float(final.q[0][0, 2]), 0.0)  # STOP at the root: no answer, score 0
    # The paper's reward with the oracle terminator at p0 = 0.8 and gamma = 1: state 2 (0.9) ends
    # the episode.
    paper = action_values(tiny_params(reward=0, terminator=0, gamma=1.0), tiny_policy())
    via_1 = (
        (0.6 - c0) + 0.5 * -1.0 + 0.5 * (1.0 + 2.0 * (1.0 - 0.6) - c1 + 1.0)
    )  # STOP below p0 pays -gamma
    via_2 = 0.9 - c1 + 1.0  # reached p0: done at once, +gamma
    assert np.isclose(float(paper.v[0][0]), 0.25 * via_1 + 0.75 * via_2, atol=1e-6)
    # Occupancy: where the decisions are made.
    shares = occupancy(tiny_params(), tiny_policy(), jnp.asarray([0]))
    assert np.allclose(np.asarray(shares[1])[[1, 2]], [0.25, 0.75]) and np.isclose(
        float(shares[0][0]), 1.0
    )


@pytest.mark.parametrize(("reward", "terminator"), list(itertools.product(REWARDS, TERMINATORS)))
def test_exact_values_equal_monte_carlo_returns_of_both_envs(
    cache: Path, reward: str, terminator: str
) -> None:
    spec = spec_for(reward, terminator)
    tables = load_tables(cache, spec, with_judge=terminator == "judge")
    params = make_params(tables)
    probs = random_policy(params, seed=3)
    exact = np.asarray(action_values(params, probs).v[0])[tables.roots]
    mc = jax_returns(params, probs, 4000, seed=1)
    for question in range(len(tables.roots)):
        assert close_to(mc[:, question], float(exact[question])), (
            question,
            mc[:, question].mean(),
            exact[question],
        )
    gym = gym_returns(DERGymEnv(cache, spec), np.asarray(probs), 600, seed=2)
    assert close_to(gym, float(exact.mean())), (gym.mean(), exact.mean())


@pytest.mark.parametrize("view", [{"transfer": False}, {"experts_per_step": 2}, {"t_max": 1}])
def test_exact_values_follow_the_last_action_and_the_derived_views(cache: Path, view: dict) -> None:
    spec = spec_for("paper", "learned", last_action_obs=True, **view)
    params = make_params(load_tables(cache, spec))
    probs = random_policy(params, seed=5, with_last=True)
    exact = float(expected_return(params, probs, params.roots))
    assert close_to(jax_returns(params, probs, 4000, seed=7), exact)
    markov = random_policy(
        params, seed=5
    )  # the same policy ignoring l: the tables agree with the plain ones
    assert np.isclose(
        float(
            expected_return(params, jnp.broadcast_to(markov[:, :, None], probs.shape), params.roots)
        ),
        float(expected_return(params, markov, params.roots)),
        atol=1e-6,
    )


@pytest.mark.parametrize("with_last", [True, False])
def test_values_on_a_batch_of_questions_rows_are_the_whole_caches(
    cache: Path, with_last: bool
) -> None:
    params = make_params(load_tables(cache, spec_for("final", "oracle", last_action_obs=with_last)))
    probs = random_policy(params, seed=9, with_last=with_last)
    whole = np.asarray(start_values(params, action_values(params, probs).v[0], params.roots))
    rows = question_rows(
        np.asarray(params.next_state), np.asarray(params.roots), params.max_depth, with_last
    )
    assert all(
        (states[~valid] == states[:, :1].repeat(states.shape[1], 1)[~valid]).all()
        for states, valid in zip(rows.states, rows.valid, strict=True)
    ), "padding repeats the root"
    picked = np.array([4, 1, 3])
    states = tuple(jnp.asarray(x[picked]) for x in rows.states)
    following = tuple(jnp.asarray(x[picked]) for x in rows.following)
    lasts = [x[picked] for x in rows.lasts]
    at_rows = tuple(
        probs[t][states[t], lasts[t]] if with_last else probs[t][states[t]]
        for t in range(len(states))
    )
    np.testing.assert_allclose(
        np.asarray(row_values(params, states, following, at_rows)), whole[picked], atol=1e-6
    )
