"""exact-pg: gradient ascent on the exact expected return of the train questions (DESIGN.md, part
1).

The cache knows every action's outcome at every state, so the objective PPO estimates from sampled
episodes can be computed outright: J(theta) = mean over train roots of V^pi_0(root), with V from
the env's own backup (`dersim.env.values.row_values`) under the actor's action probabilities at
every decision point a route can reach (`dersim.env.subgraph`). Autodiff through those D backward
passes gives the exact policy gradient: no sampling, no variance, no critic. An optional entropy
bonus tau turns V into the soft value of the entropy-regularised return. The actor is the same
network PPO trains (its critic head unused), so a run's policies of either algorithm act, evaluate
and route live alike.

Per update: the decision points of a minibatch of train questions (all of them by default), D
backward passes, global-norm clipping, Adam; a non-finite update is skipped, as in PPO. The entropy
bonus decays linearly to 0 over the updates: it keeps the policy from settling early on the route
that is best on average, then lets it become greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from dersim.env.der_env import EnvParams
from dersim.env.subgraph import QuestionRows
from dersim.env.values import row_values
from dersim.trainer.network import ActorCritic
from dersim.trainer.policy import PolicyParams, acting_by_actor, actor
from dersim.trainer.ppo import Hyper, make_optimizer


@dataclass(frozen=True)
class FullInfoConfig:
    """Settings of the full-information trainers shared by every policy of a run."""

    updates: int = (
        300  # exact-pg: gradient steps; fqi with the MLP: regression steps per backward sweep
    )
    updates_per_chunk: int = 20  # val checks, curves and checkpoints happen between chunks
    minibatch_questions: int | None = None  # train questions per update (None: all of them)
    max_grad_norm: float = 1.0


@struct.dataclass
class PGState:
    params: dict
    opt_state: optax.OptState
    key: jax.Array
    updates: jax.Array


class ExactPG:
    """exact-pg for a group of policies (leading axis), in jitted chunks of updates."""

    name = "exact-pg"

    def __init__(
        self,
        config: FullInfoConfig,
        network: ActorCritic,
        env_params: EnvParams,
        axes: EnvParams,
        hyper: Hyper,
        rows: QuestionRows,
    ) -> None:
        self.config, self.network, self.env_params, self.hyper = config, network, env_params, hyper
        self.n_chunks = max(1, -(-config.updates // config.updates_per_chunk))
        self.updates_per_chunk = config.updates_per_chunk
        self.steps_per_chunk = (
            0  # no env steps: every transition of the train questions is used exactly
        )
        n_questions = rows.n_questions
        batch = min(config.minibatch_questions or n_questions, n_questions)
        optimizer = make_optimizer(config.max_grad_norm)
        dim = env_params.embedding.shape[-1]

        row_states = tuple(jnp.asarray(x) for x in rows.states)
        row_lasts = tuple(jnp.asarray(x) for x in rows.lasts)
        row_following = tuple(jnp.asarray(x) for x in rows.following)

        def objective(params, env_params: EnvParams, questions, ent_coef):
            states = tuple(x[questions] for x in row_states)
            following = tuple(x[questions] for x in row_following)
            probs = tuple(
                jax.nn.softmax(
                    actor(
                        network,
                        params,
                        env_params,
                        states[t],
                        jnp.int32(t),
                        row_lasts[t][questions],
                    )[0],
                    axis=-1,
                )
                for t in range(len(states))
            )
            soft = row_values(env_params, states, following, probs, ent_coef).mean()
            exact = row_values(
                env_params, states, following, tuple(jax.lax.stop_gradient(p) for p in probs)
            ).mean()
            return soft, exact

        def update(state: PGState, env_params: EnvParams, hyper: Hyper):
            key, draw = jax.random.split(state.key)
            questions = (
                jnp.arange(n_questions)
                if batch == n_questions
                else jax.random.choice(draw, n_questions, (batch,), replace=False)
            )
            anneal = jnp.maximum(
                0.0, 1.0 - state.updates / config.updates
            )  # the entropy bonus decays to 0
            (soft, exact), grads = jax.value_and_grad(objective, has_aux=True)(
                state.params, env_params, questions, hyper.ent_coef * anneal
            )
            ascent = jax.tree.map(jnp.negative, grads)
            steps, opt_state = optimizer.update(ascent, state.opt_state, state.params)
            params = optax.apply_updates(state.params, steps)
            finite = jnp.isfinite(soft) & jnp.isfinite(optax.tree.norm(grads))
            params = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), params, state.params
            )
            opt_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state
            )
            metrics = {
                "return": exact,
                "loss": -soft,
                "skipped_updates": (~finite).astype(jnp.int32),
            }
            return PGState(params, opt_state, key, state.updates + 1), metrics

        def chunk(state: PGState, env_params: EnvParams, hyper: Hyper):
            return jax.lax.scan(
                lambda s, _: update(s, env_params, hyper), state, None, config.updates_per_chunk
            )

        def init(key, env_params: EnvParams, hyper: Hyper) -> PGState:
            key, init_key = jax.random.split(key)
            params = network.init(
                init_key,
                jnp.zeros((1, dim)),
                jnp.zeros((1,), jnp.int32),
                jnp.zeros((1,), jnp.int32),
            )
            return PGState(
                params,
                make_optimizer(config.max_grad_norm, hyper.lr).init(params),
                key,
                jnp.int32(0),
            )

        self._chunk = jax.jit(jax.vmap(chunk, in_axes=(0, axes, 0)), donate_argnums=0)
        self._init = jax.jit(jax.vmap(init, in_axes=(0, axes, 0)))

    def init(self, keys: jax.Array) -> PGState:
        return self._init(keys, self.env_params, self.hyper)

    def train_chunk(self, state: PGState) -> tuple[PGState, dict[str, np.ndarray]]:
        state, metrics = self._chunk(state, self.env_params, self.hyper)
        metrics = jax.tree.map(np.asarray, metrics)  # [P, updates]
        return state, {
            "return": metrics["return"][:, -1],
            "loss": metrics["loss"].mean(axis=1),
            "skipped_updates": metrics["skipped_updates"].sum(axis=1),
        }

    def policy_params(self, state: PGState) -> PolicyParams:
        return acting_by_actor(state.params, self.env_params)
