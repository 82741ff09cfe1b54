"""The optimizer every stage trains with: AdamW, linear warmup then cosine decay, global-norm clipping,
no weight decay on biases and norm scales, optional gradient accumulation, and an EMA of the weights.

The numbers come from the stage's `config.optim` (defaults in `optim_config`; the unCLIP paper's
Table 3 per stage: AdamW β1 0.9, per-stage lr, β2, ε, weight decay and EMA decay).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "constant", "linear")


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """The `config.optim` sub-config, with AdamW defaults; keyword arguments override fields."""
  c = ml_collections.ConfigDict()
  c.lr = 1e-4
  c.warmup_steps = 1000
  c.schedule = "cosine"        # cosine | constant | linear (decay after warmup)
  c.end_lr_factor = 0.0        # final lr = lr * end_lr_factor for cosine/linear
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.weight_decay = 0.0         # decoupled (AdamW); never applied to 1-D parameters
  c.grad_clip_norm = 1.0       # 0 disables clipping
  c.accum_steps = 1            # gradient accumulation: one update every `accum_steps` micro-batches
  c.ema_decay = 0.9999         # 0 disables the EMA
  for key, value in overrides.items():
    if key not in c:
      raise ValueError(f"unknown optimizer field {key!r}; known fields: {', '.join(c.keys())}")
    c[key] = value
  return c


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `cfg.lr` over `cfg.warmup_steps`, then the decay named by `cfg.schedule`."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"unknown learning-rate schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
  if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
    raise ValueError(f"learning rate must be a positive finite number, got {cfg.lr}")
  warmup = max(0, min(int(cfg.warmup_steps), int(total_steps)))
  decay_steps = max(1, int(total_steps) - warmup)
  end = cfg.lr * cfg.end_lr_factor
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_factor)
  else:
    after = optax.linear_schedule(cfg.lr, end, decay_steps)
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def decay_mask(params):
  """True for the weights that get weight decay: matrices and kernels, not biases, scales or embeddings
  of rank 1."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW with the schedule, clipping and accumulation of `cfg` (a `config.optim`)."""
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  # With accumulation the schedule counts optimizer updates: `total_steps` micro-batches make
  # total_steps / accum_steps of them.
  updates = max(1, int(total_steps) // max(1, int(cfg.accum_steps)))
  parts.append(optax.adamw(learning_rate_schedule(cfg, updates), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts)
  if int(cfg.accum_steps) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(cfg.accum_steps))
  return tx


def ema_update(ema_params, params, decay):
  """ema ← decay·ema + (1−decay)·params, in float32 (the EMA is what sampling uses)."""
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype),
                      ema_params, params)
