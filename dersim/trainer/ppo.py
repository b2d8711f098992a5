"""PPO for DER routing policies, PureJaxRL style: one readable file, everything jitted.

`make_ppo(config, network, n_states).train_chunk(runner, env_params, hyper)` runs
`config.updates_per_chunk` PPO updates (rollout with `lax.scan` over steps and `vmap` over envs,
GAE, clipped policy and value losses, entropy bonus, global-norm clipping, Adam) for ONE policy.
The trainer vmaps it over a policy axis (seeds x hyperparameter grid): per-policy values (learning
rate, entropy coefficient, reward coefficients, T_max, terminator) are array leaves; shapes
(envs, steps, network size) are static. Trajectories keep state ids, not observations; the
embedding part of the first layer is gathered per sample, or computed once for the whole state
table when that is smaller than the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from dersim.env.der_env import EnvParams, EnvState, reset, step
from dersim.trainer.network import ActorCritic
from dersim.trainer.policy import PolicyParams, acting_by_actor, actor


@dataclass(frozen=True)
class PPOConfig:
    """Shape-fixing (static) settings, shared by every policy of a run."""

    num_envs: int = 16
    num_steps: int = 16  # rollout length per env and update
    update_epochs: int = 2
    num_minibatches: int = 2
    hidden: int = 64
    max_grad_norm: float = 0.5
    updates_per_chunk: int = 20

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def steps_per_chunk(self) -> int:
        """Env steps one policy takes per chunk."""
        return self.batch_size * self.updates_per_chunk


@struct.dataclass
class Hyper:
    """Per-policy learning hyperparameters (arrays, so a grid can vmap over them)."""

    lr: jax.Array
    ent_coef: jax.Array
    clip_eps: jax.Array
    vf_coef: jax.Array
    discount: jax.Array
    gae_lambda: jax.Array


HYPER_DEFAULTS = {
    "lr": 3e-4,
    "ent_coef": 0.01,
    "clip_eps": 0.2,
    "vf_coef": 0.5,
    "discount": 0.99,
    "gae_lambda": 0.95,
}


@struct.dataclass
class Runner:
    """Everything that carries over between updates for one policy."""

    params: dict
    opt_state: optax.OptState
    env: EnvState  # batched over num_envs
    key: jax.Array
    updates: jax.Array  # int32: updates done


class Transition(NamedTuple):
    state_id: jax.Array
    t: jax.Array
    last_action: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    outcome: dict


def make_optimizer(
    max_grad_norm: float, lr: jax.Array | float = HYPER_DEFAULTS["lr"]
) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam whose learning rate lives in the optimizer state (a leaf that
    differs per policy under vmap; `update` reads it from there)."""
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.inject_hyperparams(optax.adam)(learning_rate=lr),
    )


def make_network(config: PPOConfig, env_params: EnvParams) -> ActorCritic:
    return ActorCritic(
        n_actions=env_params.n_actions,
        max_depth=env_params.max_depth,
        hidden=config.hidden,
        last_action_obs=env_params.last_action_obs,
    )


def state_table(
    network: ActorCritic, params: dict, env_params: EnvParams, use: bool
) -> jax.Array | None:
    return network.apply(params, env_params.embedding, method=ActorCritic.table) if use else None


def init_runner(key: jax.Array, config: PPOConfig, env_params: EnvParams, hyper: Hyper) -> Runner:
    """Fresh network, optimizer and envs for one policy."""
    network = make_network(config, env_params)
    key, init_key, env_key = jax.random.split(key, 3)
    d = env_params.embedding.shape[-1]
    params = network.init(
        init_key, jnp.zeros((1, d)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)
    )
    opt_state = make_optimizer(config.max_grad_norm, hyper.lr).init(params)
    _, env_state = jax.vmap(reset, in_axes=(0, None))(
        jax.random.split(env_key, config.num_envs), env_params
    )
    return Runner(params=params, opt_state=opt_state, env=env_state, key=key, updates=jnp.int32(0))


class PPOFunctions(NamedTuple):
    """`train_chunk(runner, env_params, hyper) -> (runner, metrics per update)`: rollouts in the JAX
    env and updates, for one policy; `learn(...)`: the update alone, for trajectories collected
    elsewhere (the step-by-step Gymnasium path)."""

    train_chunk: Callable
    learn: Callable


def make_ppo(config: PPOConfig, network: ActorCritic, n_states: int) -> PPOFunctions:
    """PPO's functions for one policy (vmap them over a policy axis)."""
    optimizer = make_optimizer(config.max_grad_norm)
    table_in_rollout = n_states <= config.batch_size
    table_in_update = n_states <= config.minibatch_size

    def rollout(runner: Runner, env_params: EnvParams):
        table = state_table(network, runner.params, env_params, table_in_rollout)

        def env_step(carry, _):
            env_state, key = carry
            key, action_key, step_key = jax.random.split(key, 3)
            logits, value = actor(
                network,
                runner.params,
                env_params,
                env_state.state,
                env_state.t,
                env_state.last_action,
                table,
            )
            action = jax.random.categorical(action_key, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[
                :, 0
            ]
            step_keys = jax.random.split(step_key, config.num_envs)
            _, next_env, reward, done, outcome = jax.vmap(step, in_axes=(0, 0, 0, None))(
                step_keys, env_state, action, env_params
            )
            transition = Transition(
                env_state.state,
                env_state.t,
                env_state.last_action,
                action,
                log_prob,
                value,
                reward,
                done,
                outcome,
            )
            return (next_env, key), transition

        (env_state, key), trajectory = jax.lax.scan(
            env_step, (runner.env, runner.key), None, config.num_steps
        )
        _, last_value = actor(
            network,
            runner.params,
            env_params,
            env_state.state,
            env_state.t,
            env_state.last_action,
            table,
        )
        return env_state, key, trajectory, last_value

    def advantages(trajectory: Transition, last_value: jax.Array, hyper: Hyper):
        def gae_step(carry, transition):
            gae, next_value = carry
            not_done = 1.0 - transition.done
            delta = transition.reward + hyper.discount * next_value * not_done - transition.value
            gae = delta + hyper.discount * hyper.gae_lambda * not_done * gae
            return (gae, transition.value), gae

        _, adv = jax.lax.scan(
            gae_step, (jnp.zeros_like(last_value), last_value), trajectory, reverse=True
        )
        return adv, adv + trajectory.value

    def loss_fn(params, batch, env_params: EnvParams, hyper: Hyper):
        transition, adv, targets = batch
        table = state_table(network, params, env_params, table_in_update)
        logits, value = actor(
            network,
            params,
            env_params,
            transition.state_id,
            transition.t,
            transition.last_action,
            table,
        )
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, transition.action[:, None], axis=-1)[:, 0]
        clipped_value = transition.value + jnp.clip(
            value - transition.value, -hyper.clip_eps, hyper.clip_eps
        )
        value_loss = (
            0.5 * jnp.maximum((value - targets) ** 2, (clipped_value - targets) ** 2).mean()
        )
        ratio = jnp.exp(log_prob - transition.log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        actor_loss = -jnp.minimum(
            ratio * adv, jnp.clip(ratio, 1 - hyper.clip_eps, 1 + hyper.clip_eps) * adv
        ).mean()
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
        return actor_loss + hyper.vf_coef * value_loss - hyper.ent_coef * entropy, (
            value_loss,
            actor_loss,
            entropy,
        )

    def update_minibatch(carry, batch, env_params: EnvParams, hyper: Hyper):
        params, opt_state, bad = carry
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, env_params, hyper
        )
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(
            optax.tree.norm(grads)
        )  # any NaN/inf makes the norm so
        # NaN guard: a non-finite update is skipped (and counted), never applied.
        params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, params)
        opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_opt_state, opt_state
        )
        return (params, opt_state, bad + (~finite).astype(jnp.int32)), loss

    def learn(
        params: dict,
        opt_state: optax.OptState,
        key: jax.Array,
        trajectory: Transition,
        last_value: jax.Array,
        env_params: EnvParams,
        hyper: Hyper,
    ):
        """PPO epochs over one batch of trajectories ([num_steps, num_envs]); returns the new
        parameters and optimizer state and the update's metrics."""
        adv, targets = advantages(trajectory, last_value, hyper)
        flat = jax.tree.map(
            lambda x: x.reshape((config.batch_size, *x.shape[2:])), (trajectory, adv, targets)
        )

        def epoch(carry, epoch_key):
            permutation = jax.random.permutation(epoch_key, config.batch_size)
            shuffled = jax.tree.map(
                lambda x: x[permutation].reshape(
                    (config.num_minibatches, config.minibatch_size, *x.shape[1:])
                ),
                flat,
            )
            carry, losses = jax.lax.scan(
                lambda c, b: update_minibatch(c, b, env_params, hyper), carry, shuffled
            )
            return carry, losses

        (params, opt_state, bad), losses = jax.lax.scan(
            epoch, (params, opt_state, jnp.int32(0)), jax.random.split(key, config.update_epochs)
        )
        done = trajectory.done
        episodes = done.sum()

        def mean_at_done(x):
            return jnp.where(done, x, 0).sum() / jnp.maximum(episodes, 1)

        metrics = {
            "episodes": episodes,
            "return": mean_at_done(trajectory.outcome["return"]),
            "final_score": mean_at_done(trajectory.outcome["final_score"]),
            "cost": mean_at_done(trajectory.outcome["cost"]),
            "calls": mean_at_done(trajectory.outcome["calls"].astype(jnp.float32)),
            "success": mean_at_done(trajectory.outcome["success"].astype(jnp.float32)),
            "loss": losses.mean(),
            "skipped_updates": bad,
        }
        return params, opt_state, metrics

    def update(runner: Runner, env_params: EnvParams, hyper: Hyper):
        env_state, key, trajectory, last_value = rollout(runner, env_params)
        key, learn_key = jax.random.split(key)
        params, opt_state, metrics = learn(
            runner.params, runner.opt_state, learn_key, trajectory, last_value, env_params, hyper
        )
        return Runner(
            params=params, opt_state=opt_state, env=env_state, key=key, updates=runner.updates + 1
        ), metrics

    def train_chunk(runner: Runner, env_params: EnvParams, hyper: Hyper):
        return jax.lax.scan(
            lambda r, _: update(r, env_params, hyper), runner, None, config.updates_per_chunk
        )

    return PPOFunctions(train_chunk=train_chunk, learn=learn)


class PPO:
    """PPO for a group of policies (leading axis): `steps` env steps each, in jitted chunks."""

    name = "ppo"

    def __init__(
        self,
        config: PPOConfig,
        network: ActorCritic,
        env_params: EnvParams,
        axes: EnvParams,
        hyper: Hyper,
        steps: int,
    ) -> None:
        self.config, self.env_params, self.hyper = config, env_params, hyper
        self.n_chunks = max(1, -(-steps // config.steps_per_chunk))
        self.updates_per_chunk = config.updates_per_chunk
        self.steps_per_chunk = config.steps_per_chunk
        chunk = make_ppo(config, network, env_params.next_state.shape[0]).train_chunk
        self._chunk = jax.jit(jax.vmap(chunk, in_axes=(0, axes, 0)), donate_argnums=0)
        self._init = jax.jit(
            jax.vmap(lambda k, e, h: init_runner(k, config, e, h), in_axes=(0, axes, 0))
        )

    def init(self, keys: jax.Array) -> Runner:
        return self._init(keys, self.env_params, self.hyper)

    def train_chunk(self, runner: Runner) -> tuple[Runner, dict[str, np.ndarray]]:
        runner, metrics = self._chunk(runner, self.env_params, self.hyper)
        return runner, chunk_summary(jax.tree.map(np.asarray, metrics))

    def policy_params(self, runner: Runner) -> PolicyParams:
        return acting_by_actor(runner.params, self.env_params)


def chunk_summary(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per policy: a chunk's episode-weighted means of the update metrics ([P, updates] -> [P])."""
    episodes = metrics["episodes"].astype(np.float64)
    weight = np.maximum(episodes.sum(axis=1), 1)
    summary = {
        "episodes": episodes.sum(axis=1),
        "loss": metrics["loss"].mean(axis=1),
        "skipped_updates": metrics["skipped_updates"].sum(axis=1),
    }
    for key in ("return", "final_score", "cost", "calls", "success"):
        summary[key] = (metrics[key] * episodes).sum(axis=1) / weight
    return summary
