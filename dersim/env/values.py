"""Exact values of any policy on the cache: the env's Bellman backup, written once (DESIGN.md, part
1).

Every env setting (both rewards, every terminator with its judge or noise, gamma, p0, T_max, the
cost scale and the derived views, which are just other tables) is Markov in (t, s): t calls made,
s the current state. So for a policy pi(a | s, t), D backward passes over [S, N + 1] arrays give

    Q_t(s, a) = r_t(s, a) + (done_t(s, a) ? 0 : V_{t+1}(next[s, a]))      a an expert
    Q_t(s, N) = end_payment(score[s])                                       STOP
    V_t(s)    = sum_a pi(a | s, t) Q_t(s, a)   (+ tau * entropy, the soft value, when asked)

exactly as `dersim.env.der_env.transition` pays them (the same helpers compute r and done), and the
mean of V_0 over a split's roots is the exact expected return of the policy there: what the JAX
env's and the Gymnasium twin's Monte-Carlo returns converge to. V_t is only meaningful for t <
T_max (an episode always ends at T_max) and at states a route can reach at step t; values at other
(t, s) are computed too and never read.

A policy that observes its last action l is Markov in (t, s, l) instead: the same passes run over
[S, N + 1] value tables, one per l (Q itself does not depend on l).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from dersim.env.der_env import EnvParams, call_payment, end_payment, terminator_stops


@struct.dataclass
class Values:
    """Q [D, S, N + 1] (the STOP column last) and V [D + 1, S] (V[D] = 0: no step is taken at t =
    D); for a policy that observes its last action l, V [D + 1, S, N + 1] over (s, l) (Q does not
    depend on l: the call's reward does not, and the next state's l is the call itself)."""

    q: jax.Array
    v: jax.Array


def observes_last(probs: jax.Array) -> bool:
    """Policy tables are [D, S, N + 1], or [D, S, N + 1 (last action), N + 1] when the policy
    observes its last action."""
    return probs.ndim == 4


def calls(
    params: EnvParams, states: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Every call from `states` [...] at step `t` (a scalar or [...]): the next state, its score and
    whether the episode ends there, each [..., N]."""
    next_id = jnp.maximum(params.next_state[states], 0)  # -1 (not built) is never reachable
    score = params.score[next_id]
    step = jnp.asarray(t)[..., None] if jnp.ndim(t) else t
    return next_id, score, (step + 1 >= params.t_max) | terminator_stops(params, next_id, score)


def backup(
    params: EnvParams, states: jax.Array, t: jax.Array, continuation: jax.Array
) -> jax.Array:
    """Q_t(s, a) [..., N + 1] for `states` [...] at step `t` (a scalar or [...]), given the value of
    going on after each call, continuation[..., a] = V_{t+1}(next[s, a]) (only read where the call
    does not end the episode)."""
    next_id, score, done = calls(params, states, t)
    step = jnp.asarray(t)[..., None] if jnp.ndim(t) else t
    call = call_payment(
        params, score, params.score[states][..., None], step, params.cost[states]
    ) + jnp.where(done, end_payment(params, score), continuation)
    stop = end_payment(params, params.score[states])
    return jnp.concatenate([call, stop[..., None]], axis=-1)


def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy over the last axis (0 log 0 = 0)."""
    return -jnp.sum(
        jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1
    )


def following_values(v_next: jax.Array, next_id: jax.Array) -> jax.Array:
    """V_{t+1}(next[s, a]) [S, N]: at (next[s, a], last action a) when V is over (s, l)."""
    if v_next.ndim == 1:
        return v_next[next_id]
    return v_next[next_id, jnp.arange(next_id.shape[-1])]


def action_values(
    params: EnvParams, probs: jax.Array, entropy_weight: float | jax.Array = 0.0
) -> Values:
    """Exact Q and V of the policy whose action probabilities are probs[t, s] ([D, S, N + 1], D the
    cache's depth) or probs[t, s, l] (a policy that observes its last action l); with entropy_weight
    tau > 0 the soft values of the entropy-regularised return."""
    depth, n_states = probs.shape[0], params.next_state.shape[0]
    states = jnp.arange(n_states)
    next_id = jnp.maximum(params.next_state, 0)
    v = [jnp.zeros(probs.shape[1:-1], probs.dtype)]
    q = []
    for t in reversed(range(depth)):
        q_t = backup(params, states, jnp.int32(t), following_values(v[0], next_id))
        q_here = q_t[:, None, :] if observes_last(probs) else q_t
        v_t = jnp.sum(probs[t] * q_here, axis=-1) + entropy_weight * entropy(probs[t])
        q.insert(0, q_t)
        v.insert(0, v_t)
    return Values(q=jnp.stack(q), v=jnp.stack(v))


def start_values(params: EnvParams, v0: jax.Array, roots: jax.Array) -> jax.Array:
    """V_0 at the roots (where no call was made yet: last action N)."""
    return v0[roots, params.n_experts] if v0.ndim == 2 else v0[roots]


def occupancy(params: EnvParams, probs: jax.Array, roots: jax.Array) -> jax.Array:
    """[D, S] (or [D, S, N + 1] over (s, l)): the share of episodes started at `roots` (uniformly)
    that are at state s after t calls and still going, under the policy `probs`: where its decisions
    are made."""
    depth, n_states = probs.shape[0], params.next_state.shape[0]
    states = jnp.arange(n_states)
    here = jnp.zeros(probs.shape[1:-1], probs.dtype)
    here = (
        here.at[roots, params.n_experts].add(1.0 / roots.shape[0])
        if observes_last(probs)
        else here.at[roots].add(1.0 / roots.shape[0])
    )
    shares = [here]
    for t in range(depth - 1):
        next_id, _, done = calls(params, states, jnp.int32(t))
        if observes_last(probs):  # leave (s, l) by call a to (next[s, a], a)
            moving = (here[:, :, None] * probs[t, :, :, :-1]).sum(axis=1) * ~done
            here = jnp.zeros_like(here).at[next_id, jnp.arange(next_id.shape[1])].add(moving)
        else:
            moving = (
                here[:, None] * probs[t, :, :-1] * ~done
            )  # STOP (the last column) ends the episode
            here = jnp.zeros_like(here).at[next_id.ravel()].add(moving.ravel())
        shares.append(here)
    return jnp.stack(shares)


def row_values(
    params: EnvParams,
    states: tuple[jax.Array, ...],
    following: tuple[jax.Array, ...],
    probs: tuple[jax.Array, ...],
    entropy_weight: float | jax.Array = 0.0,
) -> jax.Array:
    """V_0 at the root row of each question, from its decision points only (`dersim.env.subgraph`):
    per step t, states[t] [B, W_t], the policy's probs[t] [B, W_t, N + 1] there, and for t < T-1
    following[t] [B, W_t, N], the row of step t + 1 each call leads to. The same backup as
    `action_values`, on the rows a route can reach instead of every state: [B]."""
    value = None
    for t in reversed(range(len(states))):
        continuation = (
            jnp.zeros(states[t].shape + (params.n_experts,), probs[t].dtype)
            if value is None
            else jnp.take_along_axis(
                value, following[t].reshape(following[t].shape[0], -1), axis=1
            ).reshape(following[t].shape)
        )
        q = backup(params, states[t], jnp.int32(t), continuation)
        value = jnp.sum(probs[t] * q, axis=-1) + entropy_weight * entropy(probs[t])
    return value[:, 0]


def expected_return(
    params: EnvParams, probs: jax.Array, roots: jax.Array, entropy_weight: float | jax.Array = 0.0
) -> jax.Array:
    """The policy's exact mean return over episodes started at `roots` (V_0 averaged over them)."""
    return start_values(params, action_values(params, probs, entropy_weight).v[0], roots).mean()
