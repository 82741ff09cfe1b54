"""Optimizer state sharded over the data axis (ZeRO-2) follows the replicated optimizer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import assert_same_run, losses, tiny_clip_config as tiny_config
from unclip_jax.errors import UserError
from unclip_jax.train import loop, optim, zero


def test_sharded_adamw_equals_optax_adamw_with_clipping():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  cfg = optim.optim_config(lr=0.1, warmup_steps=2, weight_decay=0.1, grad_clip_norm=1.0, ema_decay=0.9)
  tx = optim.make_optimizer(cfg, 10)
  n = 4
  layout = zero.FlatLayout.of(params, n)
  assert layout.size == 18 and layout.shard_size == 5
  per_device_grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32) * 3, params)
                      for _ in range(n)]
  stacked = jax.tree.map(lambda *g: jnp.stack(g), *per_device_grads)

  def step(params, grads, shard):
    new, shard, norm = zero.sharded_update(layout, cfg, 10, params, grads, shard, "d")
    return new, shard, norm

  shards = zero.init_shards(layout, params, ema=True)
  ref_params, ref_state, ref_ema = params, tx.init(params), params
  p = params
  for _ in range(3):
    p, shards, norm = jax.pmap(step, axis_name="d", in_axes=(None, 0, 0), out_axes=(None, 0, None))(p, stacked, shards)
    mean_grads = jax.tree.map(lambda g: g.mean(0), stacked)
    updates, ref_state = tx.update(mean_grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
    ref_ema = optim.ema_update(ref_ema, ref_params, 0.9)
    np.testing.assert_allclose(float(norm), float(optax.tree.norm(mean_grads)), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(zero.gather_ema(layout, shards)), jax.tree.leaves(ref_ema)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_with_sharded_optimizer_follows_the_replicated_run(data_dir, tmp_path):
  replicated = loop.train(tiny_config(data_dir, **{"train.steps": 4}), tmp_path / "rep", progress=False)
  sharded = loop.train(tiny_config(data_dir, **{"train.steps": 4, "train.shard_optimizer": True}), tmp_path / "zero",
                       progress=False)
  b = assert_same_run(tmp_path / "zero", sharded.state.params, tmp_path / "rep", replicated.state.params,
                      loss_rtol=1e-4, rtol=1e-3, atol=1e-5)
  assert sharded.state.opt_state["mu"].shape[0] == jax.local_device_count()
  # A sharded run stopped at step 2 and resumed ends exactly where the uninterrupted one did.
  config = tiny_config(data_dir, **{"train.steps": 4, "train.shard_optimizer": True})
  assert loop.train(config, tmp_path / "zero2", stop_after=2, progress=False).final_step == 2
  resumed = loop.train(config, tmp_path / "zero2", progress=False)
  assert resumed.start_step == 2 and losses(tmp_path / "zero2") == b
  assert_same_run(tmp_path / "zero2", resumed.state, tmp_path / "zero", sharded.state)


def test_resuming_a_sharded_run_on_another_device_count_is_refused_and_keeps_the_checkpoints(data_dir, tmp_path):
  config = tiny_config(data_dir, **{"train.steps": 4, "train.shard_optimizer": True})
  loop.train(config, tmp_path / "run", stop_after=2, progress=False)
  before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
  fewer = tiny_config(data_dir, **{"train.steps": 4, "train.shard_optimizer": True, "train.num_devices": 4})
  with pytest.raises(UserError, match=r"does not fit this run .*number of devices.*has shape \(8,.*\) there, "
                                      r"\(4,.*\) now"):
    loop.train(fewer, tmp_path / "run", progress=False)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before  # nothing set aside as damaged
