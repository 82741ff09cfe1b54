"""The shared optimizer: schedule shape, decay mask, clipping, accumulation and the EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unclip_jax.train import optim


def test_warmup_then_cosine_schedule():
  cfg = optim.optim_config(lr=1e-3, warmup_steps=10, schedule="cosine", end_lr_factor=0.1)
  lr = optim.learning_rate_schedule(cfg, total_steps=110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 5e-4, 1e-3], rtol=1e-6)
  np.testing.assert_allclose(lr(60), 1e-3 * (0.1 + 0.9 * 0.5), rtol=1e-5)  # half-way down the cosine
  np.testing.assert_allclose(lr(110), 1e-4, rtol=1e-5)
  assert optim.learning_rate_schedule(optim.optim_config(schedule="constant", warmup_steps=0), 5)(3) == 1e-4


def test_weight_decay_skips_rank_one_parameters():
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  cfg = optim.optim_config(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5, grad_clip_norm=0.0)
  tx = optim.make_optimizer(cfg, 10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5)  # decayed
  np.testing.assert_array_equal(new["bias"], 1.0)           # not decayed


def test_gradient_clipping_and_accumulation():
  params = {"w": jnp.zeros((3,))}
  cfg = optim.optim_config(lr=1.0, warmup_steps=0, schedule="constant", grad_clip_norm=1.0, accum_steps=2,
                           b1=0.0, b2=0.0, eps=1e-12)
  tx = optim.make_optimizer(cfg, 10)
  state = tx.init(params)
  g1, g2 = {"w": jnp.array([30.0, 0.0, 0.0])}, {"w": jnp.array([10.0, 0.0, 0.0])}
  u1, state = tx.update(g1, state, params)
  np.testing.assert_array_equal(u1["w"], 0.0)  # first micro-batch: no update yet
  u2, state = tx.update(g2, state, params)
  assert float(u2["w"][0]) == pytest.approx(-1.0, rel=1e-5)  # mean grad 20 -> clipped to 1 -> adam sign step


def test_ema_update():
  ema = {"w": jnp.zeros((2,), jnp.float32)}
  params = {"w": jnp.ones((2,), jnp.bfloat16)}
  out = optim.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(out["w"], 0.1)
  assert out["w"].dtype == jnp.float32


def test_bad_optimizer_settings():
  with pytest.raises(ValueError, match="unknown optimizer field 'learning_rate'"):
    optim.optim_config(learning_rate=1.0)
  with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
    optim.learning_rate_schedule(optim.optim_config(schedule="step"), 10)
  with pytest.raises(ValueError, match="positive finite"):
    optim.learning_rate_schedule(optim.optim_config(lr=float("nan")), 10)


def test_accumulation_schedule_counts_updates_and_ema_moves_only_on_updates():
  from unclip_jax.train.state import TrainState

  cfg = optim.optim_config(lr=1.0, warmup_steps=0, schedule="linear", end_lr_factor=0.0, accum_steps=2,
                           grad_clip_norm=0.0, ema_decay=0.5)
  tx = optim.make_optimizer(cfg, total_steps=8)  # 8 micro-batches = 4 updates
  state = TrainState.create({"w": jnp.zeros((2,))}, tx, ema=True)
  grads = {"w": jnp.ones((2,))}
  state = state.apply_gradients(grads, tx, 0.5)
  np.testing.assert_array_equal(state.params["w"], 0.0)
  np.testing.assert_array_equal(state.ema_params["w"], 0.0)  # no update yet: the EMA stays
  state = state.apply_gradients(grads, tx, 0.5)
  assert float(state.params["w"][0]) < 0
  np.testing.assert_allclose(state.ema_params["w"], 0.5 * state.params["w"])
  inner_lr = optim.learning_rate_schedule(cfg, 4)
  assert float(inner_lr(2)) == pytest.approx(0.5)  # the linear decay spans the 4 updates
