"""fqi: fitted Q-iteration from the whole cache (DESIGN.md, part 1).

Backward over the steps t = D-1 .. 0, a regressor Q^_t(embedding of s) -> N + 1 action values is
fitted on the decision points a route reaches after exactly t calls from the train roots (a state,
and the last action when the policy observes it), to the targets of the env's own backup
(`dersim.env.values.backup`)

    y_t(s, a) = r_t(s, a) + (done ? 0 : V_{t+1}(next[s, a]))        (STOP: its end payment)

where the continuation V_{t+1} never reads the reference's hindsight, only what a deployed policy
gets: with `target = "fitted"` it is max_a' Q^_{t+1}(next[s, a], a') under the policy's action mask
(classic FQI); with `target = "policy"` it is the exact return of acting greedily on the fitted
Q^_{t+1..} from there (the cache can evaluate that deployable policy exactly, which removes the
max's optimism and the regressor's shrinkage from the targets). The policy acts greedily on Q^_t.

Regressors:
- `ridge` (closed form, float64): one SVD of the step's centred features, then a batched solve for
  every policy of the group (their alphas, rewards and l2 strengths differ, the features do not).
  With T_max = 1 it is the `linear` router of `dersim routers` (ridge from the root embedding to
  each expert's score, minus its cost weight); every further step is a route that router cannot
  make. A policy that observes its last action gets one linear head per (step, last action).
- `mlp`: the actor network's outputs read as action values (the step and last action are inputs),
  fitted by Adam to the targets of every step at once with an L2 penalty l2 / n on its weights; each
  of the D sweeps (chunks) recomputes the targets from the previous sweep's network, so after D
  sweeps every step's targets rest on the fitted values of the next.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from dersim.env.der_env import EnvParams
from dersim.env.subgraph import flat_rows, question_rows
from dersim.env.values import action_values, backup
from dersim.trainer.exact_pg import FullInfoConfig
from dersim.trainer.network import ActorCritic
from dersim.trainer.policy import (
    ACTOR,
    LINEAR,
    PolicyParams,
    actor,
    greedy_probs,
    linear_scores,
    mask_actions,
    policy_scores,
    zero_linear,
)
from dersim.trainer.ppo import Hyper, make_optimizer

REGRESSORS = ("ridge", "mlp")
TARGETS = ("fitted", "policy")


@functools.cache
def batched_backup(axes: EnvParams):
    """`backup` over a policy axis (compiled once per structure of the stacked settings)."""
    return jax.jit(jax.vmap(backup, in_axes=(axes, None, None, 0)))


@functools.cache
def batched_linear_scores(axes: EnvParams):
    """The masked linear-head action values of rows (states, step, last actions), over a policy
    axis."""

    def scores(linear, env, states, t, lasts):
        return mask_actions(linear_scores(linear, env.embedding[states], t, lasts), env, t)

    return jax.jit(jax.vmap(scores, in_axes=(0, axes, None, None, None)))


def ridge_solve(
    features: np.ndarray, targets: np.ndarray, l2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept for every policy at once, float64:
    argmin ||y - X w - b||^2 + l2 ||w||^2 per target column, from one eigendecomposition of the
    centred X's Gram matrix (a pseudo-inverse where l2 = 0 leaves a direction unconstrained).
    features [n, d], targets [P, n, A], l2 [P] -> (kernel [P, d, A], bias [P, A])."""
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=1)
    centred = x - x_mean
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
    denominator = (
        np.maximum(eigenvalues, 0.0)[None, :] + np.asarray(l2, np.float64)[:, None]
    )  # [P, d]
    floor = 1e-10 * max(float(eigenvalues.max(initial=0.0)), 1.0)
    inverse = np.where(denominator > floor, 1.0 / np.maximum(denominator, floor), 0.0)
    projected = np.einsum("dr,pna,nd->pra", vectors, y - y_mean[:, None, :], centred, optimize=True)
    kernel = np.einsum("dr,pra->pda", vectors, inverse[:, :, None] * projected)
    return kernel, y_mean - np.einsum("d,pda->pa", x_mean, kernel)


@struct.dataclass
class FQIState:
    """The MLP regressor's network and optimizer (unused by ridge) and the linear heads (ridge's
    fit)."""

    params: dict
    opt_state: optax.OptState
    key: jax.Array
    linear: dict


class FittedQ:
    """fqi for a group of policies that share a regressor and a target rule (leading policy
    axis)."""

    name = "fqi"

    def __init__(
        self,
        config: FullInfoConfig,
        network: ActorCritic,
        env_params: EnvParams,
        axes: EnvParams,
        hyper: Hyper,
        l2: np.ndarray,
        regressor: str,
        target: str,
        train_roots: np.ndarray,
    ) -> None:
        self.config, self.network, self.env_params, self.axes, self.hyper = (
            config,
            network,
            env_params,
            axes,
            hyper,
        )
        self.l2, self.regressor, self.target = np.asarray(l2, np.float64), regressor, target
        depth = env_params.max_depth
        # The decision points after exactly t calls and, for each call from them, the row it leads
        # to at t + 1.
        self.rows, self.following = flat_rows(
            question_rows(
                np.asarray(env_params.next_state), train_roots, depth, env_params.last_action_obs
            )
        )
        self.n_chunks = 1 if regressor == "ridge" else depth
        self.updates_per_chunk = 1 if regressor == "ridge" else config.updates
        self.steps_per_chunk = 0
        self._backup = batched_backup(axes)
        self._scores = batched_linear_scores(axes)
        if regressor == "mlp":
            self._sweep = jax.jit(
                jax.vmap(self._make_sweep(), in_axes=(0, axes, 0, 0)), donate_argnums=0
            )

    def init(self, keys: jax.Array) -> FQIState:
        linear = zero_linear(self.env_params)
        dim = self.env_params.embedding.shape[-1]

        def one(key, hyper: Hyper) -> FQIState:
            key, init_key = jax.random.split(key)
            params = self.network.init(
                init_key,
                jnp.zeros((1, dim)),
                jnp.zeros((1,), jnp.int32),
                jnp.zeros((1,), jnp.int32),
            )
            return FQIState(
                params,
                make_optimizer(self.config.max_grad_norm, hyper.lr).init(params),
                key,
                linear,
            )

        batched = jax.vmap(one)
        if self.regressor == "mlp":
            return jax.jit(batched)(keys, self.hyper)
        # Ridge never reads the network: zeros of its shapes, without compiling its initialisation.
        return jax.tree.map(
            lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(batched, keys, self.hyper)
        )

    def continuation(self, values_next: jax.Array | None, t: int) -> jax.Array:
        """V_{t+1} at the point each call from step t's rows leads to: [P, n_t, N] (0 at the last
        step)."""
        if values_next is None:
            return jnp.zeros(
                (len(self.l2), len(self.rows[t][0]), self.env_params.n_experts), jnp.float32
            )
        return values_next[:, self.following[t]]

    # -- ridge ------------------------------------------------------------------------------

    def fit_ridge(self, linear: dict) -> dict:
        """Every policy's linear heads, backward over the steps (one chunk)."""
        kernel, bias = (
            np.array(linear["kernel"]),
            np.array(linear["bias"]),
        )  # [P, D + 1, L, d, A], [P, D + 1, L, A]
        embedding = np.asarray(self.env_params.embedding)
        values_next = None
        for t in reversed(range(len(self.rows))):
            states, lasts = self.rows[t]
            targets = self._backup(
                self.env_params,
                jnp.asarray(states),
                jnp.int32(t),
                self.continuation(values_next, t),
            )
            slots = np.minimum(lasts, kernel.shape[2] - 1)
            for slot in np.unique(slots):
                chosen = slots == slot
                kernel[:, t, slot], bias[:, t, slot] = ridge_solve(
                    embedding[states[chosen]], np.asarray(targets)[:, chosen], self.l2
                )
            linear = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
            fitted = self._scores(
                linear, self.env_params, jnp.asarray(states), jnp.int32(t), jnp.asarray(lasts)
            )
            values_next = (
                fitted.max(axis=-1)
                if self.target == "fitted"
                else jnp.take_along_axis(targets, fitted.argmax(axis=-1)[..., None], axis=-1)[
                    ..., 0
                ]
            )
        return linear

    # -- mlp --------------------------------------------------------------------------------

    def _make_sweep(self):
        """One sweep for one policy: targets from the current network (its fitted next-step values,
        or the exact values of acting greedily on it), then `updates` full-batch Adam steps on the
        squared error of the allowed actions plus l2 / n ||theta||^2."""
        network, config, depth = self.network, self.config, len(self.rows)
        states = jnp.asarray(np.concatenate([r[0] for r in self.rows]))
        lasts = jnp.asarray(np.concatenate([r[1] for r in self.rows]))
        steps = jnp.asarray(
            np.concatenate([np.full(len(r[0]), t) for t, r in enumerate(self.rows)]), jnp.int32
        )
        offsets = np.cumsum([0] + [len(r[0]) for r in self.rows])
        following = np.zeros((len(states), self.env_params.n_experts), np.int64)
        for t in range(depth - 1):
            following[offsets[t] : offsets[t + 1]] = self.following[t] + offsets[t + 1]
        following = jnp.asarray(following)
        optimizer = make_optimizer(config.max_grad_norm)

        def targets_of(params: dict, env_params: EnvParams) -> jax.Array:
            if self.target == "policy":
                policy = PolicyParams(params, zero_linear(env_params), jnp.int32(ACTOR))
                exact = action_values(
                    env_params, greedy_probs(policy_scores(network, policy, env_params))
                )
                return exact.q[steps, states]
            scores, _ = actor(network, params, env_params, states, steps, lasts)
            cont = jnp.where((steps + 1 < depth)[:, None], scores.max(axis=-1)[following], 0.0)
            return backup(env_params, states, steps, cont)

        def sweep(state: FQIState, env_params: EnvParams, hyper: Hyper, l2: jax.Array):
            targets = jax.lax.stop_gradient(targets_of(state.params, env_params))
            allowed = mask_actions(jnp.zeros_like(targets), env_params, steps) == 0

            def loss(params):
                predicted = network.apply(params, env_params.embedding[states], steps, lasts)[0]
                error = jnp.where(allowed, predicted - targets, 0.0)
                penalty = sum(jnp.sum(w**2) for w in jax.tree.leaves(params))
                return (error**2).sum() / allowed.sum() + l2 * penalty / states.shape[0]

            def step(carry, _):
                params, opt_state = carry
                value, grads = jax.value_and_grad(loss)(params)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), value

            (params, opt_state), losses = jax.lax.scan(
                step, (state.params, state.opt_state), None, config.updates
            )
            return state.replace(params=params, opt_state=opt_state), losses[-1]

        return sweep

    # -- both -------------------------------------------------------------------------------

    def train_chunk(self, state: FQIState) -> tuple[FQIState, dict[str, np.ndarray]]:
        if self.regressor == "ridge":
            return state.replace(linear=self.fit_ridge(state.linear)), {}
        state, loss = self._sweep(
            state, self.env_params, self.hyper, jnp.asarray(self.l2, jnp.float32)
        )
        return state, {"loss": np.asarray(loss)}

    def policy_params(self, state: FQIState) -> PolicyParams:
        head = LINEAR if self.regressor == "ridge" else ACTOR
        return PolicyParams(state.params, state.linear, jnp.full((len(self.l2),), head, jnp.int32))
