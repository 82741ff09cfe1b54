"""The training loop's edges: Ctrl-C, metrics after a resume, damaged run checkpoints, gradient
accumulation, importance sampling, and bf16 + remat train steps of every tiny stage."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import assert_same_run, tiny_clip_config
from unclip_jax import diffusion
from unclip_jax.train import config_loader, loop, optim
from unclip_jax.train.metrics import read_metrics
from unclip_jax.train.stages import get_stage
from unclip_jax.train.stages.base import LOSS_HISTORY, TIMESTEP_LOSSES
from unclip_jax.train.state import TrainState


def _on_call(monkeypatch, n, action):
  """Makes the loop's train step run `action()` just before its n-th call."""
  real = loop.make_train_step

  def patched(*args, **kwargs):
    step, calls = real(*args, **kwargs), []

    def wrapped(state, batch):
      calls.append(1)
      if len(calls) == n:
        action()
      return step(state, batch)
    return wrapped
  monkeypatch.setattr(loop, "make_train_step", patched)


@pytest.mark.slow
def test_ctrl_c_saves_the_current_step_and_a_second_one_aborts(data_dir, tmp_path, monkeypatch):
  before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
  _on_call(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGINT))
  result = loop.train(tiny_clip_config(data_dir), tmp_path / "once", progress=False)
  assert result.stopped_early and result.final_step == 3
  assert sorted(os.listdir(tmp_path / "once" / "checkpoints")) == ["2", "3"]

  def twice():
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
  _on_call(monkeypatch, 3, twice)
  with pytest.raises(KeyboardInterrupt):
    loop.train(tiny_clip_config(data_dir), tmp_path / "twice", progress=False)
  assert sorted(os.listdir(tmp_path / "twice" / "checkpoints")) == ["2"]  # aborted: step 3 not saved
  assert signal.getsignal(signal.SIGINT) is before  # handlers restored


@pytest.mark.slow
def test_a_resumed_run_logs_each_step_once(data_dir, tmp_path, monkeypatch):
  straight = loop.train(tiny_clip_config(data_dir), tmp_path / "straight", progress=False)

  def crash():
    raise RuntimeError("simulated crash")
  _on_call(monkeypatch, 6, crash)  # steps 1-5 logged, the last checkpoint is step 4
  with pytest.raises(RuntimeError, match="simulated crash"):
    loop.train(tiny_clip_config(data_dir), tmp_path / "crashed", progress=False)
  assert [r["step"] for r in read_metrics(tmp_path / "crashed")] == [1, 2, 3, 4, 5]
  monkeypatch.undo()
  resumed = loop.train(tiny_clip_config(data_dir), tmp_path / "crashed", progress=False)
  assert resumed.start_step == 4
  assert [r["step"] for r in read_metrics(tmp_path / "crashed")] == [1, 2, 3, 4, 5, 6]
  assert_same_run(tmp_path / "straight", straight.state, tmp_path / "crashed", resumed.state)


def _damage_largest_file(step_dir):
  files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(files[-1].read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 64):
    data[i] ^= 0xFF
  files[-1].write_bytes(bytes(data))


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path, capsys):
  straight = loop.train(tiny_clip_config(data_dir), tmp_path / "straight", progress=False)
  loop.train(tiny_clip_config(data_dir), tmp_path / "run", stop_after=4, progress=False)
  _damage_largest_file(tmp_path / "run" / "checkpoints" / "4")
  capsys.readouterr()
  resumed = loop.train(tiny_clip_config(data_dir), tmp_path / "run", progress=False)
  out = capsys.readouterr().out
  assert "warning: the checkpoint at step 4" in out and "resuming from step 2" in out, out
  assert resumed.start_step == 2 and (tmp_path / "run" / "checkpoints" / "4.damaged").is_dir()
  assert_same_run(tmp_path / "straight", straight.state, tmp_path / "run", resumed.state)


def test_accumulated_micro_batches_equal_one_step_on_their_concatenation():
  """A per-example loss (linear regression): k micro-batch gradients accumulated = one step on all of
  them, parameters and EMA alike; without accumulation two updates would be applied instead."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}

  def grads(p, xs, ys):
    return jax.grad(lambda p: jnp.mean(jnp.sum((xs @ p["w"] + p["b"] - ys) ** 2, -1)))(p)

  def config(accum):
    return optim.optim_config(lr=0.1, warmup_steps=0, weight_decay=0.01, ema_decay=0.5, accum_steps=accum)
  one = TrainState.create(params, tx := optim.make_optimizer(config(1), 10), ema=True)
  one = one.apply_gradients(grads(one.params, x, y), tx, 0.5)
  acc = TrainState.create(params, tx := optim.make_optimizer(config(2), 20), ema=True)
  for half in (slice(0, 4), slice(4, 8)):
    acc = acc.apply_gradients(grads(acc.params, x[half], y[half]), tx, 0.5)
  for a, b in zip(jax.tree.leaves((one.params, one.ema_params)), jax.tree.leaves((acc.params, acc.ema_params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert not np.allclose(one.params["w"], params["w"])  # an update did happen


def _stage(spec, **overrides):
  config = config_loader.load_config_file(spec)
  return get_stage(config_loader.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()]))


def test_importance_sampling_draws_timesteps_by_their_loss_history():
  stage = _stage("configs/prior.py:tiny", **{"diffusion.timestep_sampler": "loss_second_moment"})
  history = stage.timestep_extra()[LOSS_HISTORY]
  T, slots = history.losses.shape
  assert T == 1000 and not np.asarray(history.counts).any()
  # warmed up: timesteps below 100 have 30x the loss of the others
  high = jnp.where(jnp.arange(T)[:, None] < 100, 30.0, 1.0) * jnp.ones((T, slots))
  warm = diffusion.LossHistory(high, jnp.full((T,), slots, jnp.int32))
  t, w = stage.timesteps(jax.random.key(0), 4000, {LOSS_HISTORY: warm})
  assert np.mean(np.asarray(t) < 100) > 0.7  # uniform would give 0.1
  np.testing.assert_allclose(np.mean(np.asarray(w)), 1.0, rtol=0.15)  # reweighted to stay unbiased
  t_uniform, _ = _stage("configs/prior.py:tiny").timesteps(jax.random.key(0), 4000, {})
  assert abs(np.mean(np.asarray(t_uniform) < 100) - 0.1) < 0.03
  metrics = stage.timestep_metrics(jnp.float32(1), t[:4], jnp.ones(4))
  assert TIMESTEP_LOSSES in metrics
  with pytest.raises(ValueError, match="timestep_sampler must be one of"):
    _stage("configs/prior.py:tiny", **{"diffusion.timestep_sampler": "lossy"})


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["configs/prior.py:tiny", "configs/decoder.py:tiny", "configs/upsampler.py:tiny"])
def test_bf16_remat_train_step_is_finite_and_close_to_float32(spec):
  """One pmapped train step of each tiny diffusion stage on random data (8 devices): bfloat16 compute
  with rematerialisation gives a finite loss and gradient norm close to the float32 step's; with
  importance sampling on, the step also fills the loss history with the global batch."""
  out = {}
  for dtype, remat in (("float32", False), ("bfloat16", True)):
    stage = _stage(spec, **{"model.dtype": dtype, "model.remat": remat,
                            "diffusion.timestep_sampler": "loss_second_moment"})
    devices = jax.local_devices()
    params = jax.jit(stage.init_params)(jax.random.key(0))
    extra = jax.tree_util.tree_map_with_path(  # zeros, but a standard deviation of one for the prior's stats
        lambda path, s: jnp.full(s.shape, "std" in jax.tree_util.keystr(path), s.dtype), stage.abstract_extra())
    tx = optim.make_optimizer(stage.config.optim, 10)
    state = TrainState.create(params, tx, ema=True, extra=extra)
    rng = np.random.default_rng(0)
    batch = {}
    for k, s in stage.batch_spec(2).items():
      shape = (len(devices),) + s.shape
      batch[k] = (np.ones(shape, bool) if s.dtype == jnp.bool_ else
                  rng.integers(1, 100, shape).astype(s.dtype) if jnp.issubdtype(s.dtype, jnp.integer) else
                  rng.uniform(-1, 1, shape).astype(s.dtype))
    new, metrics = loop.make_train_step(stage, tx, stage.config, devices)(state, batch)
    out[dtype] = {k: float(np.asarray(v)) for k, v in metrics.items()}
    assert int(np.asarray(new.extra[LOSS_HISTORY].counts).sum()) == 2 * len(devices)
  for dtype in out:
    assert np.isfinite(out[dtype]["loss"]) and np.isfinite(out[dtype]["grad_norm"]), out
  np.testing.assert_allclose(out["bfloat16"]["loss"], out["float32"]["loss"], rtol=0.1)
  np.testing.assert_allclose(out["bfloat16"]["grad_norm"], out["float32"]["grad_norm"], rtol=0.2)
