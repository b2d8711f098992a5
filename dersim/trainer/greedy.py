"""Greedy (argmax) episodes of trained policies on every question of a split, all policies at
once."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dersim.env.der_env import EnvParams, reset_to, transition
from dersim.trainer.network import ActorCritic
from dersim.trainer.policy import PolicyParams, action_scores


@functools.cache
def make_greedy(
    network: ActorCritic, axes: EnvParams
) -> Callable[[PolicyParams, EnvParams, np.ndarray], dict]:
    """A jitted `greedy(policies, env_params, roots)`: for every policy (leading axis of `policies`
    and of the per-policy leaves of `env_params`) and every root, the final state, calls, summed
    cost (raw unit), return and the actions taken ([P, Q, D], -1 after the end). Compiled once per
    number of roots and of policies (and kept for every trainer of the same network and settings),
    so it can run after every training chunk."""

    def episode(policy_params, one_env, question):
        _, start = reset_to(one_env, question)

        def body(carry, _):
            state, done = carry
            scores = action_scores(
                network,
                policy_params,
                one_env,
                state.state[None],
                state.t[None],
                state.last_action[None],
            )
            action = jnp.argmax(scores[0]).astype(jnp.int32)
            moved, _, ended, _ = transition(state, action, one_env)
            state = jax.tree.map(lambda old, new: jnp.where(done, old, new), state, moved)
            return (state, done | ended), jnp.where(done, -1, action)

        (final, _), actions = jax.lax.scan(body, (start, jnp.bool_(False)), None, one_env.max_depth)
        return final.state, final.t, final.cost, final.ret, actions

    per_question = jax.vmap(episode, in_axes=(None, None, 0))
    per_policy = jax.vmap(per_question, in_axes=(0, axes, None))

    @jax.jit
    def run(params: PolicyParams, env_params: EnvParams, roots: jax.Array):
        env_params = env_params.replace(roots=roots)
        return per_policy(params, env_params, jnp.arange(roots.shape[0], dtype=jnp.int32))

    def greedy(
        params: PolicyParams, env_params: EnvParams, roots: np.ndarray
    ) -> dict[str, np.ndarray]:
        final_state, calls, cost, ret, actions = run(
            params, env_params, jnp.asarray(roots, jnp.int32)
        )
        return {
            "final_state": np.asarray(final_state),
            "calls": np.asarray(calls),
            "env_cost": np.asarray(cost),
            "return": np.asarray(ret),
            "actions": np.asarray(actions),
        }

    return greedy
