"""The `lax.scan` samplers, guidance and thresholding: equivalences, determinism, compile counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import diffusion as D


def tiny_net(seed=0, out_channels=3):
  """A fixed nonlinear 'network' of (x, t, cond): enough structure for guidance to matter."""
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(0, 0.3, (3, out_channels)), jnp.float32)
  v = jnp.asarray(rng.normal(0, 0.3, (4, out_channels)), jnp.float32)

  def fn(x, t, cond):
    h = jnp.einsum("bhwc,cd->bhwd", x, w) + (cond @ v)[:, None, None, :] + (t / 1000.0)[:, None, None, None]
    return jnp.tanh(h)

  return fn


def make_process(variance="fixed_small", spacing="10"):
  return D.GaussianDiffusion.from_betas(D.get_betas("cosine"), variance=variance).respace(spacing)


SHAPE = (2, 4, 4, 3)
COND = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4)), jnp.float32)
UNCOND = jnp.zeros((2, 4), jnp.float32)


@pytest.mark.parametrize("sampler,eta,variance", [("ddpm", 0.0, "fixed_small"), ("ddim", 0.5, "fixed_small"),
                                                  ("ddpm", 0.0, "learned_range")])
def test_scan_sampler_equals_python_loop_over_the_same_step(sampler, eta, variance):
  process = make_process(variance)
  net = tiny_net(out_channels=6 if variance == "learned_range" else 3)
  key = jax.random.key(7)
  scanned = D.sample(process, net, SHAPE, key, cond=COND, uncond=UNCOND, guidance_scale=3.0, sampler=sampler,
                     eta=eta, clip_x0=1.0)
  guided = D.guided_model_fn(net, COND, UNCOND, 3.0, guided_channels=3 if process.learns_variance else None)
  init_key, step_keys = D.sampling_keys(key, process.num_timesteps)
  x = jax.random.normal(init_key, SHAPE)
  step = jax.jit(lambda x, i, k: D.denoising_step(process, guided, x, i, k, sampler=sampler, eta=eta,
                                                  denoise_x0=D.make_x0_denoiser(clip=1.0)))
  for j, i in enumerate(range(process.num_timesteps - 1, -1, -1)):
    x, _ = step(x, i, step_keys[j])
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_guidance_scale_one_equals_the_unguided_conditional_sampler():
  process = make_process()
  key = jax.random.key(3)
  # x0 clipped to [-1, 1]: unclipped, this net's samples reach 1e4 and a doubled batch's float32 rounding
  # (another vectorisation of the same sums, on some CPUs) moves their small entries past any fixed tolerance
  guided = D.sample(process, tiny_net(), SHAPE, key, cond=COND, uncond=UNCOND, guidance_scale=1.0, clip_x0=1.0)
  plain = D.sample(process, tiny_net(), SHAPE, key, cond=COND, clip_x0=1.0)
  assert np.abs(np.asarray(plain)).max() < 10
  np.testing.assert_allclose(np.asarray(guided), np.asarray(plain), rtol=1e-6, atol=1e-6)
  strong = D.sample(process, tiny_net(), SHAPE, key, cond=COND, uncond=UNCOND, guidance_scale=5.0, clip_x0=1.0)
  assert np.abs(np.asarray(strong) - np.asarray(plain)).max() > 1e-2  # guidance does something
  # A Python-number scale inside jit is checked on the host, never traced.
  jitted = jax.jit(lambda k: D.sample(process, tiny_net(), SHAPE, k, cond=COND, uncond=UNCOND, guidance_scale=5.0,
                                      clip_x0=1.0))
  np.testing.assert_allclose(np.asarray(jitted(key)), np.asarray(strong), rtol=1e-5, atol=1e-5)


def test_guidance_uses_one_doubled_batch_call_and_keeps_the_conditional_variance():
  calls = []

  def net(x, t, cond):
    calls.append(x.shape[0])
    return jnp.concatenate([jnp.ones_like(x) * cond[:, :1, None, None], jnp.full_like(x, 0.5) * cond[:, :1, None, None]], -1)

  cond, uncond = jnp.full((2, 4), 2.0), jnp.full((2, 4), 1.0)
  fn = D.guided_model_fn(net, cond, uncond, 3.0, guided_channels=3)
  out = fn(jnp.zeros(SHAPE), jnp.zeros((2,), jnp.int32))
  assert calls == [4]
  np.testing.assert_allclose(out[..., :3], 3.0 * 2.0 + (1 - 3.0) * 1.0)  # s·cond + (1−s)·uncond
  np.testing.assert_allclose(out[..., 3:], 0.5 * 2.0)  # variance from the conditional branch


def test_sampler_compiles_once_per_shape():
  traces = []
  net = tiny_net()

  def counting_net(x, t, cond):
    traces.append(x.shape)
    return net(x, t, cond)

  process = make_process()
  draw = jax.jit(lambda key, cond, scale: D.sample(process, counting_net, (cond.shape[0], 4, 4, 3), key, cond=cond,
                                                   uncond=jnp.zeros_like(cond), guidance_scale=scale))
  for seed, scale in [(0, 1.0), (1, 4.0), (2, 8.0)]:
    draw(jax.random.key(seed), COND, scale)
  assert len(traces) == 1
  draw(jax.random.key(0), jnp.ones((3, 4)), 2.0)
  assert len(traces) == 2


def test_sampling_is_deterministic_per_key_and_varies_across_keys():
  process = make_process()
  draw = jax.jit(lambda key: D.sample(process, tiny_net(), SHAPE, key, cond=COND, sampler="ddim", eta=1.0))
  a, b, c = draw(jax.random.key(0)), draw(jax.random.key(0)), draw(jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2


def test_trajectory_records_every_step_and_ends_at_the_sample():
  process = make_process(spacing="7")
  out, traj = D.sample(process, tiny_net(), SHAPE, jax.random.key(0), cond=COND, return_trajectory=True)
  assert traj.x.shape == (7,) + SHAPE and traj.pred_x0.shape == (7,) + SHAPE
  np.testing.assert_array_equal(np.asarray(traj.x[-1]), np.asarray(out))
  # The last ancestral step adds no noise and its posterior mean is x0 itself.
  np.testing.assert_allclose(np.asarray(traj.pred_x0[-1]), np.asarray(out), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(traj.x[0]) - np.asarray(out)).max() > 1e-2


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
  process = make_process()
  x_T = jax.random.normal(jax.random.key(9), SHAPE)
  a = D.sample(process, tiny_net(), SHAPE, jax.random.key(0), cond=COND, sampler="ddim", x_T=x_T)
  b = D.sample(process, tiny_net(), SHAPE, jax.random.key(1), cond=COND, sampler="ddim", x_T=x_T)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_thresholding():
  x0 = jnp.asarray(np.random.default_rng(0).normal(0, 3, (4, 8, 8, 3)), jnp.float32)
  static = D.make_x0_denoiser(clip=1.0)(x0)
  assert float(jnp.abs(static).max()) == 1.0
  dyn = D.make_x0_denoiser(clip=1.0, dynamic=0.995)(x0)
  assert float(jnp.abs(dyn).max()) <= 1.0 + 1e-6
  assert float(jnp.mean(jnp.abs(dyn) == 1.0)) < float(jnp.mean(jnp.abs(static) == 1.0))  # fewer saturated
  small = x0 * 0.1 / jnp.abs(x0).max()
  np.testing.assert_array_equal(np.asarray(D.dynamic_threshold(small, 0.995)), np.asarray(small))


# ------------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError


def test_bad_input_raises_clear_value_errors():
  process = make_process()
  net = tiny_net()
  with pytest.raises(ValueError, match="unknown beta schedule 'cosinus'"):
    D.get_betas("cosinus")
  with pytest.raises(ValueError, match="unknown sampler 'euler'"):
    D.sample(process, net, SHAPE, jax.random.key(0), cond=COND, sampler="euler")
  full = D.GaussianDiffusion.from_betas(D.get_betas("linear"))
  with pytest.raises(ValueError, match="asks for 2000 steps but the model was trained with 1000"):
    full.respace("2000")
  with pytest.raises(ValueError, match="asks for 1500 steps"):
    full.respace("ddim1500")
  with pytest.raises(ValueError, match="bad respacing string 'fast'"):
    full.respace("fast")
  with pytest.raises(ValueError, match="cannot hold 600 steps"):
    full.respace("600,10")
  with pytest.raises(ValueError, match="no integer stride"):
    full.respace("ddim300")
  with pytest.raises(ValueError, match="not an already respaced one"):
    process.respace("5")
  for scale in (float("nan"), float("inf"), "strong"):
    with pytest.raises(ValueError, match="guidance scale must be a finite number"):
      D.sample(process, net, SHAPE, jax.random.key(0), cond=COND, uncond=UNCOND, guidance_scale=scale)
  with pytest.raises(ValueError, match="batch axis"):
    D.sample(process, net, (16,), jax.random.key(0), cond=COND)
  with pytest.raises(ValueError, match="batch axis"):
    full.q_sample(jnp.zeros((8,)), jnp.zeros((8,), jnp.int32), jnp.zeros((8,)))
  with pytest.raises(ValueError, match="timesteps must be a scalar or have shape"):
    full.q_sample(jnp.zeros((2, 3)), jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="does not match x_t shape"):
    full.p_mean_variance(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 4, 3)), jnp.zeros((2,), jnp.int32))
  learned = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), variance="learned_range")
  with pytest.raises(ValueError, match="must output 6 channels"):
    learned.p_mean_variance(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 4, 3)), jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match="unknown prediction 'noise'"):
    D.GaussianDiffusion.from_betas(D.get_betas("cosine"), prediction="noise")
  with pytest.raises(ValueError, match="unknown variance"):
    D.GaussianDiffusion.from_betas(D.get_betas("cosine"), variance="small")
  with pytest.raises(ValueError, match="unknown diffusion loss"):
    D.training_losses(full, lambda x, t: x, jnp.zeros(SHAPE), jnp.zeros((2,), jnp.int32), jnp.zeros(SHAPE), loss="l1")
  with pytest.raises(ValueError, match="needs loss='hybrid'"):
    D.training_losses(learned, lambda x, t: x, jnp.zeros(SHAPE), jnp.zeros((2,), jnp.int32), jnp.zeros(SHAPE))
  with pytest.raises(ValueError, match="eta must be a finite number"):
    D.sample(process, net, SHAPE, jax.random.key(0), cond=COND, sampler="ddim", eta=float("nan"))
