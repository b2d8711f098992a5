"""The DER environment as pure JAX functions over a cache (gymnax style; semantics in `dersim.env`).

Everything is a pytree: `EnvParams` holds the cache tables as device arrays plus the reward
coefficients as arrays, so one jitted `step` serves every policy of a grid under `vmap` (over
envs and over params). No Python control flow depends on traced values; the episode auto-resets
inside `step`. The observation is a function of (state id, t, last action), so trainers can keep
trajectories as ids and gather embeddings only where needed (XLA drops unused observations).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dersim.env import REWARDS, TERMINATORS
from dersim.env.tables import EnvError, EnvTables, check_setting

ORACLE, LEARNED, JUDGE = (TERMINATORS.index(name) for name in ("oracle", "learned", "judge"))
PAPER, FINAL = (REWARDS.index(name) for name in ("paper", "final"))
POLICY_SETTINGS = (
    "alpha",
    "beta",
    "gamma",
    "p0",
    "t_max",
    "terminator",
    "reward",
    "judge_error",
    "judge_threshold",
)


@struct.dataclass
class EnvParams:
    """Cache tables (S states, N experts, Q questions) and reward settings; all leaves are arrays
    except the static shape facts at the end."""

    next_state: jax.Array  # int32 [S, N], -1 = not built
    score: jax.Array  # float32 [S]
    cost: jax.Array  # float32 [S, N], raw unit
    embedding: jax.Array  # float32 [S, d]
    judge_prob: jax.Array  # float32 [S]
    noise: jax.Array  # float32 [S]
    roots: jax.Array  # int32 [Q]
    cost_scale: (
        jax.Array
    )  # float32 [], shared by every policy (a property of the cache and cost mode)
    alpha: jax.Array  # float32 []
    beta: jax.Array  # float32 []
    gamma: jax.Array  # float32 []
    p0: jax.Array  # float32 []
    t_max: jax.Array  # int32 []
    terminator: jax.Array  # int32 [], index into dersim.env.TERMINATORS
    reward: jax.Array  # int32 [], index into dersim.env.REWARDS
    judge_error: jax.Array  # float32 []
    judge_threshold: jax.Array  # float32 []
    max_depth: int = struct.field(pytree_node=False, default=1)  # D: sizes the step one-hot
    last_action_obs: bool = struct.field(pytree_node=False, default=False)

    @property
    def n_experts(self) -> int:
        return self.next_state.shape[-1]

    @property
    def n_actions(self) -> int:
        """N experts + STOP."""
        return self.n_experts + 1

    @property
    def obs_dim(self) -> int:
        return (
            self.embedding.shape[-1]
            + self.max_depth
            + 1
            + (self.n_experts + 1 if self.last_action_obs else 0)
        )


@struct.dataclass
class EnvState:
    """One episode in progress."""

    question: jax.Array  # int32: index into params.roots
    state: jax.Array  # int32: current state id
    t: jax.Array  # int32: calls made
    prev_score: jax.Array  # float32: P of the current answer (0 at the root)
    last_action: jax.Array  # int32: N before the first call
    cost: jax.Array  # float32: summed call cost
    ret: jax.Array  # float32: summed reward


def _index(name: str, value: str | int, known: tuple[str, ...]) -> int:
    if isinstance(value, str):
        if value not in known:
            raise EnvError(f"unknown {name} '{value}' (known: {', '.join(known)})")
        return known.index(value)
    return int(value)


def policy_settings(tables: EnvTables, **overrides: Any) -> dict[str, Any]:
    """The spec's per-policy settings with `overrides`, checked (one-line errors naming the
    option)."""
    spec = tables.spec
    settings = {k: getattr(spec, k) for k in POLICY_SETTINGS} | overrides
    if not 1 <= int(settings["t_max"]) <= tables.max_depth:
        raise EnvError(
            f"T_max = {settings['t_max']} but the cache is built to depth {tables.max_depth}; "
            "routes never step past the built depth"
        )
    for name in ("alpha", "beta", "gamma"):
        check_setting(name, float(settings[name]))
    for name in ("p0", "judge_error", "judge_threshold"):
        check_setting(name, float(settings[name]), 0.0, 1.0)
    if _index("terminator", settings["terminator"], TERMINATORS) == JUDGE and (
        tables.judge is None or np.float32(tables.judge.p0) != np.float32(settings["p0"])
    ):
        raise EnvError(
            "the judge terminator needs the tables' judge, fitted at the same p0 (load the tables "
            "with with_judge=True and do not vary p0 across judge policies)"
        )
    return settings


def make_params(tables: EnvTables, **overrides: Any) -> EnvParams:
    """The env's device arrays and settings for one policy.

    Args:
        tables: the tables `load_tables` read.
        **overrides: per-policy settings that replace the spec's (alpha, beta, gamma, p0, t_max,
            terminator and reward by name or index, judge_error, judge_threshold).

    Returns:
        `EnvParams`, ready for `reset`, `step` and `jax.vmap` over stacked settings.

    Raises:
        EnvError: a setting out of range, with the option named.
    """
    settings = policy_settings(tables, **overrides)
    return EnvParams(
        next_state=jnp.asarray(tables.next_state),
        score=jnp.asarray(tables.score),
        cost=jnp.asarray(tables.cost),
        embedding=jnp.asarray(tables.embedding),
        judge_prob=jnp.asarray(tables.judge_prob),
        noise=jnp.asarray(tables.noise),
        roots=jnp.asarray(tables.roots),
        cost_scale=jnp.float32(tables.cost_scale),
        alpha=jnp.float32(settings["alpha"]),
        beta=jnp.float32(settings["beta"]),
        gamma=jnp.float32(settings["gamma"]),
        p0=jnp.float32(settings["p0"]),
        t_max=jnp.int32(settings["t_max"]),
        terminator=jnp.int32(_index("terminator", settings["terminator"], TERMINATORS)),
        reward=jnp.int32(_index("reward", settings["reward"], REWARDS)),
        judge_error=jnp.float32(settings["judge_error"]),
        judge_threshold=jnp.float32(settings["judge_threshold"]),
        max_depth=tables.max_depth,
        last_action_obs=tables.spec.last_action_obs,
    )


STATE_TABLES = ("next_state", "score", "cost", "embedding", "judge_prob", "noise")


def pad_states(params: EnvParams, multiple: int) -> EnvParams:
    """`params` with its state tables padded to a multiple of `multiple` rows, so the state axis
    can be split evenly across devices. Padding states are unreachable (no transition leads to
    them) and inert: no expert built (-1), score, cost and embedding 0."""
    extra = -params.next_state.shape[0] % multiple
    if not extra:
        return params

    def pad(x: jax.Array, fill: int | float) -> jax.Array:
        return jnp.concatenate([x, jnp.full((extra, *x.shape[1:]), fill, x.dtype)])

    return params.replace(
        **{
            name: pad(getattr(params, name), -1 if name == "next_state" else 0)
            for name in STATE_TABLES
        }
    )


def observation(
    params: EnvParams, state_id: jax.Array, t: jax.Array, last_action: jax.Array
) -> jax.Array:
    """[d + D + 1 (+ N + 1)]: embedding, one-hot step, optional one-hot last action."""
    parts = [
        params.embedding[state_id],
        jax.nn.one_hot(t, params.max_depth + 1, dtype=params.embedding.dtype),
    ]
    if params.last_action_obs:
        parts.append(
            jax.nn.one_hot(last_action, params.n_experts + 1, dtype=params.embedding.dtype)
        )
    return jnp.concatenate(parts, axis=-1)


def observe(params: EnvParams, state: EnvState) -> jax.Array:
    return observation(params, state.state, state.t, state.last_action)


def reset_to(params: EnvParams, question: jax.Array) -> tuple[jax.Array, EnvState]:
    """Start an episode on question index `question` of the split."""
    question = jnp.asarray(question, jnp.int32)
    state = EnvState(
        question=question,
        state=params.roots[question],
        t=jnp.int32(0),
        prev_score=jnp.float32(0),
        last_action=jnp.int32(params.n_experts),
        cost=jnp.float32(0),
        ret=jnp.float32(0),
    )
    return observe(params, state), state


def reset(key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    """Start an episode on a uniformly drawn question of the split.

    Args:
        key: a JAX PRNG key.
        params: from `make_params`.

    Returns:
        (observation float32 [obs_dim], the episode's first `EnvState`).
    """
    return reset_to(params, jax.random.randint(key, (), 0, params.roots.shape[0], dtype=jnp.int32))


def terminator_stops(params: EnvParams, next_id: jax.Array, score: jax.Array) -> jax.Array:
    """Whether the terminator ends the episode at the new state `next_id` (score P), before T_max.

    oracle: (P >= p0) XOR flip[s'], flip[s] = noise[s] < judge_error; judge: judge_prob[s'] >=
    judge_threshold; learned and none: never (learned ends by STOP)."""
    oracle_stop = (score >= params.p0) ^ (params.noise[next_id] < params.judge_error)
    judge_stop = params.judge_prob[next_id] >= params.judge_threshold
    return jnp.where(
        params.terminator == ORACLE, oracle_stop, (params.terminator == JUDGE) & judge_stop
    )


def call_payment(
    params: EnvParams, score: jax.Array, prev_score: jax.Array, t: jax.Array, call_cost: jax.Array
) -> jax.Array:
    """The reward of a call before the episode's end payment, c = alpha * C / cost_scale:
    paper: P - c at t == 0, P + beta * (P - P_prev) - c after; final: -c."""
    improvement = jnp.where(t > 0, params.beta * (score - prev_score), 0.0)
    paid = jnp.where(params.reward == FINAL, 0.0, score + improvement)
    return paid - params.alpha * call_cost / params.cost_scale


def end_payment(params: EnvParams, score: jax.Array) -> jax.Array:
    """What the episode's end pays for its final answer's score P: +gamma if P >= p0 else -gamma,
    plus P under the final reward."""
    return jnp.where(score >= params.p0, params.gamma, -params.gamma) + jnp.where(
        params.reward == FINAL, score, 0.0
    )


def transition(
    state: EnvState, action: jax.Array, params: EnvParams
) -> tuple[EnvState, jax.Array, jax.Array, dict]:
    """One step without auto-reset: (next state, reward, done, outcome of the episode if done).

    Actions are clipped to 0..N (anything above N is STOP): a jitted step cannot raise."""
    action = jnp.clip(jnp.asarray(action, jnp.int32), 0, params.n_experts)
    stop = action == params.n_experts
    expert = jnp.minimum(action, params.n_experts - 1)
    # The call (or, for STOP, staying put): s' = next_state[s, a], P = score[s'], C = cost[s, a].
    next_id = jnp.where(stop, state.state, params.next_state[state.state, expert])
    score = params.score[next_id]
    call_cost = jnp.where(stop, 0.0, params.cost[state.state, expert])
    t = state.t + jnp.where(stop, 0, 1)
    # Done: STOP, T_max reached, or the terminator's rule at s'.
    done = stop | (t >= params.t_max) | terminator_stops(params, next_id, score)
    # Reward: the call's payment (none for STOP), plus the end payment when done.
    reward = jnp.where(
        stop, 0.0, call_payment(params, score, state.prev_score, state.t, call_cost)
    ) + jnp.where(done, end_payment(params, score), 0.0)
    next_state = EnvState(
        question=state.question,
        state=next_id,
        t=t,
        prev_score=score,
        last_action=action,
        cost=state.cost + call_cost,
        ret=state.ret + reward,
    )
    outcome = {
        "final_score": score,
        "calls": t,
        "cost": next_state.cost,
        "return": next_state.ret,
        "success": score >= params.p0,
        "question": state.question,
    }
    return next_state, reward, done, outcome


def _question_from_key(key: jax.Array, n_questions: int) -> jax.Array:
    """A uniform question index from a key's own (already pseudo-random) bits: a modulo instead of
    another threefry draw, because this runs for every env at every step."""
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return (bits[..., 0] % jnp.uint32(n_questions)).astype(jnp.int32)


def step(
    key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict]:
    """Step, and auto-reset to a fresh question when the episode ends (gymnax convention).

    Args:
        key: a JAX PRNG key; draws the next question when the episode ends.
        state: the current `EnvState`.
        action: 0..N-1 calls that expert, N is STOP (values above N are STOP too).
        params: from `make_params`.

    Returns:
        (observation, state, reward, done, info). When done, the observation and state belong to
        the new episode, while reward, done and info (final_score, calls, cost, return, success,
        question) describe the one that ended.
    """
    next_state, reward, done, outcome = transition(state, action, params)
    _, fresh = reset_to(params, _question_from_key(key, params.roots.shape[0]))
    merged = jax.tree.map(lambda new, old: jnp.where(done, new, old), fresh, next_state)
    return observe(params, merged), merged, reward, done, outcome
