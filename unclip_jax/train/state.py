"""The train state every stage shares: step, parameters, optimizer state, EMA, non-trained variables.

No PRNG key is stored: the key of step s is `fold_in(key(seed), s)` (and the device index under pmap),
so a resumed run draws exactly the randomness the uninterrupted run would have, from the step alone.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from unclip_jax.train.optim import ema_update


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: optimizer updates applied so far
  params: Any                # the trained parameters (float32)
  opt_state: Any
  ema_params: Any            # EMA of params (sampling uses it); an empty dict when the EMA is off
  extra: Any                 # non-trained variables, e.g. the prior's embedding statistics

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, *, ema: bool, extra=None) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               ema_params=jax.tree.map(jnp.copy, params) if ema else {}, extra=extra if extra is not None else {})

  def apply_gradients(self, grads, tx: optax.GradientTransformation, ema_decay: float,
                      postprocess=None) -> "TrainState":
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    if postprocess is not None:
      params = postprocess(params)
    ema = self.ema_params
    if ema:
      ema = ema_update(ema, params, ema_decay)
      if isinstance(tx, optax.MultiSteps):  # accumulating: the EMA moves only when the parameters do
        ema = jax.tree.map(lambda new, old: jnp.where(tx.has_updated(opt_state), new, old), ema, self.ema_params)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema)

  def sampling_params(self):
    """The EMA parameters when there are any, else the online ones."""
    return self.ema_params if self.ema_params else self.params


def step_key(seed: int, step) -> jax.Array:
  """The PRNG key of optimizer step `step` (a traced or concrete integer)."""
  return jax.random.fold_in(jax.random.key(seed), step)


# Keys for work that is not an optimizer step, far from any step number a run reaches.
INIT_STREAM, SAMPLES_STREAM = 0x7FFFFFFF, 0x7FFFFFFE
