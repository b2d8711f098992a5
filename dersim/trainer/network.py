"""The actor-critic: an MLP over the env's observation, with its first layer factored.

The observation is [embedding(state), one-hot(t), one-hot(last action)]; a dense first layer on
it equals `embedding @ W + W_t[t] + W_a[last] + b`. Factoring it this way lets the trainer apply
`embedding @ W` either per sample (gathered rows) or once to the whole state table when the table
is smaller than the batch — the same function, far fewer FLOPs on small caches.

Flax Linen rather than NNX: Linen parameters are plain pytrees, which is what a policy axis under
`vmap`, optax states and msgpack checkpoints all want, with no module state to thread through.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class ActorCritic(nn.Module):
    """Shared factored first layer, then separate actor and critic heads (tanh MLPs)."""

    n_actions: int
    max_depth: int
    hidden: int = 64
    last_action_obs: bool = False

    def setup(self) -> None:
        self.embed = nn.Dense(self.hidden, name="embed")
        self.step_embed = nn.Embed(self.max_depth + 1, self.hidden, name="step_embed")
        if self.last_action_obs:
            self.action_embed = nn.Embed(self.n_actions, self.hidden, name="action_embed")
        self.actor_hidden = nn.Dense(self.hidden, name="actor_hidden")
        self.actor_out = nn.Dense(
            self.n_actions, kernel_init=nn.initializers.orthogonal(0.01), name="actor_out"
        )
        self.critic_hidden = nn.Dense(self.hidden, name="critic_hidden")
        self.critic_out = nn.Dense(
            1, kernel_init=nn.initializers.orthogonal(1.0), name="critic_out"
        )

    def table(self, embedding: jax.Array) -> jax.Array:
        """The embedding part of the first layer, for any rows: [..., d] -> [..., hidden]."""
        return self.embed(embedding)

    def heads(
        self, first: jax.Array, t: jax.Array, last_action: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Logits [..., n_actions] and values [...] from the first layer's embedding part."""
        x = first + self.step_embed(t)
        if self.last_action_obs:
            x = x + self.action_embed(last_action)
        x = jnp.tanh(x)
        logits = self.actor_out(jnp.tanh(self.actor_hidden(x)))
        value = self.critic_out(jnp.tanh(self.critic_hidden(x)))[..., 0]
        return logits, value

    def __call__(self, embedding_rows: jax.Array, t: jax.Array, last_action: jax.Array):
        return self.heads(self.table(embedding_rows), t, last_action)
