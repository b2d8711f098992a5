"""How a trained routing policy acts: one score per action at a state, masked, and the greedy
choice.

Every algorithm's policy is a `PolicyParams`: the actor-critic network's parameters (PPO and
exact-pg act by its actor logits, fqi with the MLP regressor by the same outputs read as action
values), a per-step linear action-value head (fqi with ridge: Q_t(s) = embedding(s) @ W_t + b_t),
and `head`, which of the two acts. Both have the same shape in every policy of a run, so a grid of
mixed algorithms is one stacked pytree: greedy episodes, checkpoints, evaluation and live routing
treat every policy alike. Masking is the same for both: STOP only under the `learned` terminator
and only after the first call (a router must give an answer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from dersim.env.der_env import LEARNED, EnvParams
from dersim.trainer.network import ActorCritic

MASKED_LOGIT = -1e9
HEADS = ("actor", "linear")
ACTOR, LINEAR = range(len(HEADS))


@struct.dataclass
class PolicyParams:
    """One policy (or, stacked, a policy axis): the network, the linear head, and which one acts."""

    network: dict  # ActorCritic variables
    # {"kernel": [D + 1, L, d, N + 1], "bias": [D + 1, L, N + 1]}: per step t and last action
    # (L = 1 when the policy does not observe its last action, else N + 1)
    linear: dict
    head: jax.Array  # int32 []: ACTOR or LINEAR


def zero_linear(env_params: EnvParams) -> dict:
    """A linear head that scores every action 0 (the head of policies that act by the network)."""
    steps, lasts = (
        env_params.max_depth + 1,
        env_params.n_actions if env_params.last_action_obs else 1,
    )
    return {
        "kernel": jnp.zeros(
            (steps, lasts, env_params.embedding.shape[-1], env_params.n_actions), jnp.float32
        ),
        "bias": jnp.zeros((steps, lasts, env_params.n_actions), jnp.float32),
    }


def acting_by_actor(network_params: dict, env_params: EnvParams) -> PolicyParams:
    """Policies (a leading axis) that act by the network's actor, from its stacked parameters."""
    n = jax.tree.leaves(network_params)[0].shape[0]
    linear = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), zero_linear(env_params))
    return PolicyParams(network_params, linear, jnp.full((n,), ACTOR, jnp.int32))


def mask_actions(scores: jax.Array, env_params: EnvParams, t: jax.Array) -> jax.Array:
    """STOP (the last column) only for the `learned` terminator and only once a call was made."""
    stop_allowed = (env_params.terminator == LEARNED) & (t > 0)
    return scores.at[..., -1].set(jnp.where(stop_allowed, scores[..., -1], MASKED_LOGIT))


def actor(
    network: ActorCritic,
    params: dict,
    env_params: EnvParams,
    state_id: jax.Array,
    t: jax.Array,
    last_action: jax.Array,
    table: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Masked actor logits and critic values for a batch of (state id, t, last action). `table` is
    the network's first layer precomputed over every state, or None to apply it to the gathered
    rows."""
    first = (
        network.apply(params, env_params.embedding[state_id], method=ActorCritic.table)
        if table is None
        else table[state_id]
    )
    logits, value = network.apply(params, first, t, last_action, method=ActorCritic.heads)
    return mask_actions(logits, env_params, t), value


def linear_table(linear: dict, rows: jax.Array) -> jax.Array:
    """Every step's and last action's action values for rows [..., d]: [..., D + 1, L, N + 1]."""
    return jnp.einsum("...d,tlda->...tla", rows, linear["kernel"]) + linear["bias"]


def pick_slot(table: jax.Array, t: jax.Array, last_action: jax.Array) -> jax.Array:
    """table[..., t, l, :] (the last action is ignored by a head with one slot)."""
    slot = jnp.minimum(last_action, table.shape[-2] - 1)
    flat = table.reshape(*table.shape[:-3], -1, table.shape[-1])
    return jnp.take_along_axis(flat, (t * table.shape[-2] + slot)[..., None, None], axis=-2)[
        ..., 0, :
    ]


def linear_scores(linear: dict, rows: jax.Array, t: jax.Array, last_action: jax.Array) -> jax.Array:
    """Q_{t,l}(s) = rows @ kernel[t, l] + bias[t, l] for rows [..., d] at steps t [...] after last
    actions l [...] -> [..., N + 1]."""
    return pick_slot(linear_table(linear, rows), t, last_action)


def action_scores(
    network: ActorCritic,
    policy: PolicyParams,
    env_params: EnvParams,
    state_id: jax.Array,
    t: jax.Array,
    last_action: jax.Array,
) -> jax.Array:
    """The masked score of every action [..., N + 1] that the policy maximises: its greedy action is
    the argmax."""
    logits, _ = actor(network, policy.network, env_params, state_id, t, last_action)
    values = mask_actions(
        linear_scores(policy.linear, env_params.embedding[state_id], t, last_action), env_params, t
    )
    return jnp.where(policy.head == LINEAR, values, logits)


def decision_points(env_params: EnvParams) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(state ids, steps, last actions) of every decision the exact values need, for t < D:
    [D, S] for a policy of (t, s), [D, S, N + 1] when it observes its last action."""
    n_states, depth = env_params.next_state.shape[0], env_params.max_depth
    shape = (
        (depth, n_states, env_params.n_actions) if env_params.last_action_obs else (depth, n_states)
    )
    grid = jnp.indices(shape, dtype=jnp.int32)
    last = (
        grid[2] if env_params.last_action_obs else jnp.full(shape, env_params.n_experts, jnp.int32)
    )
    return grid[1], grid[0], last


def policy_scores(network: ActorCritic, policy: PolicyParams, env_params: EnvParams) -> jax.Array:
    """The policy's masked action scores at every decision point (`decision_points`): [..., N + 1]
    (each head applied once per state, then gathered)."""
    states, steps, last = decision_points(env_params)
    table = network.apply(policy.network, env_params.embedding, method=ActorCritic.table)
    logits, _ = actor(network, policy.network, env_params, states, steps, last, table)
    values = pick_slot(linear_table(policy.linear, env_params.embedding)[states], steps, last)
    return jnp.where(policy.head == LINEAR, mask_actions(values, env_params, steps), logits)


def actor_probs(network: ActorCritic, params: dict, env_params: EnvParams) -> jax.Array:
    """The actor's action probabilities at every decision point (`decision_points`), the first layer
    applied once per state: [D, S, N + 1] or [D, S, N + 1, N + 1]."""
    table = network.apply(params, env_params.embedding, method=ActorCritic.table)
    logits, _ = actor(network, params, env_params, *decision_points(env_params), table)
    return jax.nn.softmax(logits, axis=-1)


def greedy_probs(scores: jax.Array) -> jax.Array:
    """One-hot of the argmax (the greedy policy as action probabilities)."""
    return jax.nn.one_hot(jnp.argmax(scores, axis=-1), scores.shape[-1], dtype=jnp.float32)
