"""Which timesteps a training batch sees: uniform, or importance-sampled by the loss (improved DDPM).

Importance sampling draws t with probability proportional to sqrt(E[L_t²]) over the last
`history` losses at t, mixed with a small uniform share, and reweights each example by 1/(T·p_t) so
the objective stays unbiased. It only starts once every timestep has a full history; until then
sampling is uniform. The state is a pytree, so it lives in the train state, is checkpointed with it,
and is updated inside the jitted step from the (all-gathered) per-example losses.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

TIMESTEP_SAMPLERS = ("uniform", "loss_second_moment")


class LossHistory(NamedTuple):
  """The last `history` losses seen at each timestep, and how many of those slots are filled."""

  losses: jax.Array  # (T, history) float32
  counts: jax.Array  # (T,) int32


def init_loss_history(num_timesteps: int, history: int = 10) -> LossHistory:
  return LossHistory(jnp.zeros((num_timesteps, history), jnp.float32), jnp.zeros((num_timesteps,), jnp.int32))


def loss_second_moment_probs(state: LossHistory, uniform_prob: float = 0.001) -> jax.Array:
  """Sampling probabilities (T,): uniform until warmed up, then ∝ sqrt(mean of squared losses)."""
  num_timesteps, history = state.losses.shape
  warmed_up = jnp.all(state.counts == history)
  weights = jnp.sqrt(jnp.mean(jnp.square(state.losses), axis=-1))
  weights = weights / jnp.sum(weights)
  weights = weights * (1.0 - uniform_prob) + uniform_prob / num_timesteps
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
  return jnp.where(warmed_up, weights / jnp.sum(weights), uniform)


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int,
                     state: LossHistory | None = None) -> tuple[jax.Array, jax.Array]:
  """(t, weights): `batch_size` training timesteps and the loss weights that keep the objective unbiased."""
  if state is None:
    t = jax.random.randint(key, (batch_size,), 0, num_timesteps)
    return t, jnp.ones((batch_size,), jnp.float32)
  probs = loss_second_moment_probs(state)
  t = jax.random.choice(key, num_timesteps, (batch_size,), p=probs)
  return t, 1.0 / (num_timesteps * probs[t])


def update_loss_history(state: LossHistory, t: jax.Array, losses: jax.Array) -> LossHistory:
  """Appends each (t, loss) in order; a full row drops its oldest loss. Pass the global batch."""
  history = state.losses.shape[1]

  def add(i, s):
    ti, li = t[i], losses[i].astype(jnp.float32)
    row, count = s.losses[ti], s.counts[ti]
    full = count == history
    shifted = jnp.where(full, jnp.roll(row, -1), row)
    row = shifted.at[jnp.where(full, history - 1, count)].set(li)
    return LossHistory(s.losses.at[ti].set(row), s.counts.at[ti].set(jnp.minimum(count + 1, history)))

  return jax.lax.fori_loop(0, t.shape[0], add, state)
