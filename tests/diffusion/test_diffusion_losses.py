"""Training losses, timestep sampling, schedules and the per-stage diffusion configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import diffusion as D


def linear_net(params, x, t):
  """Mean half from params['mean'], variance half from params['var']: lets a test see which half a
  loss term trains."""
  return jnp.concatenate([x * params["mean"], jnp.tanh(x * params["var"] + t[:, None, None, None] / 1000.0)], -1)


def test_hybrid_loss_trains_the_variance_only_through_the_vb_term():
  process = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), variance="learned_range")
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (4, 4, 4, 3)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
  t = jnp.array([0, 3, 400, 999])
  params = {"mean": jnp.full((3,), 0.3), "var": jnp.full((3,), 0.2)}

  def term(name):
    return lambda p: jnp.mean(D.training_losses(process, lambda x, tt: linear_net(p, x, tt), x0, t, noise,
                                                loss="hybrid")[name])

  g_vb = jax.grad(term("vb"))(params)
  g_mse = jax.grad(term("mse"))(params)
  np.testing.assert_array_equal(np.asarray(g_vb["mean"]), 0.0)  # stop-gradient on the mean
  assert np.all(np.abs(np.asarray(g_vb["var"])) > 0)
  np.testing.assert_array_equal(np.asarray(g_mse["var"]), 0.0)
  assert np.all(np.abs(np.asarray(g_mse["mean"])) > 0)


def test_losses_are_float32_and_finite_for_a_bfloat16_model():
  process = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), variance="learned_range")
  x0 = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 4, 4, 3)), jnp.float32)
  noise = jnp.asarray(np.random.default_rng(2).standard_normal(x0.shape), jnp.float32)
  params = {"mean": jnp.full((3,), 0.3, jnp.bfloat16), "var": jnp.full((3,), 0.2, jnp.bfloat16)}
  model = lambda x, t: linear_net(params, x.astype(jnp.bfloat16), t.astype(jnp.bfloat16))  # noqa: E731
  terms = jax.jit(lambda: D.training_losses(process, model, x0, jnp.array([0, 1, 999]), noise, loss="hybrid"))()
  for name in ("loss", "mse", "vb"):
    assert terms[name].dtype == jnp.float32 and terms[name].shape == (3,)
    assert np.all(np.isfinite(np.asarray(terms[name])))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_mse_is_zero_for_the_perfect_prediction(prediction):
  process = D.GaussianDiffusion.from_betas(D.get_betas("linear"), prediction=prediction)
  rng = np.random.default_rng(3)
  x0 = jnp.asarray(rng.uniform(-1, 1, (3, 8)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
  t = jnp.array([5, 500, 990])
  target = {"eps": noise, "x0": x0, "v": process.v_target(x0, t, noise)}[prediction]
  terms = D.training_losses(process, lambda x, tt: target, x0, t, noise)
  np.testing.assert_allclose(np.asarray(terms["loss"]), 0.0, atol=1e-12)
  # ... and the conversions the sampler uses recover x0 from that prediction.
  x_t = process.q_sample(x0, t, noise)
  np.testing.assert_allclose(np.asarray(process.predict_x0(target, x_t, t)), np.asarray(x0), atol=2e-4)


def test_importance_sampling_is_unbiased_and_prefers_high_loss_timesteps():
  T = 50
  per_t_loss = jnp.linspace(0.1, 5.0, T)
  state = D.init_loss_history(T, history=4)
  for _ in range(4):  # fill every row: sampling switches from uniform to loss-aware
    state = D.update_loss_history(state, jnp.arange(T), per_t_loss)
  t, w = D.sample_timesteps(jax.random.key(0), 200_000, T, state)
  counts = np.bincount(np.asarray(t), minlength=T)
  assert counts[-5:].sum() > 3 * counts[:5].sum()
  np.testing.assert_allclose(float(jnp.mean(w * per_t_loss[t])), float(jnp.mean(per_t_loss)), rtol=0.02)
  t_u, w_u = D.sample_timesteps(jax.random.key(0), 1000, T)
  assert int(t_u.min()) >= 0 and int(t_u.max()) < T and np.all(np.asarray(w_u) == 1)


def test_schedules():
  cos = D.get_betas("cosine", 1000)
  assert cos.shape == (1000,) and cos.max() <= 0.999 and np.all(cos > 0)
  np.testing.assert_allclose(D.get_betas("linear", 1000)[[0, -1]], [1e-4, 0.02])
  np.testing.assert_allclose(D.get_betas("linear", 4000)[[0, -1]], [2.5e-5, 0.005])  # rescaled for T
  abar = np.cumprod(1 - cos)
  assert np.all(np.diff(abar) < 0) and abar[0] > 0.9999 and abar[-1] < 1e-4
  np.testing.assert_array_equal(D.get_betas("squaredcos_cap_v2"), cos)
  for name in D.SCHEDULES:
    assert np.all(np.diff(np.cumprod(1 - D.get_betas(name, 100))) < 0)


def test_respaced_process_keeps_the_marginals_at_kept_steps():
  full = D.GaussianDiffusion.from_betas(D.get_betas("cosine"))
  for spec in ("25", "ddim50", "10,10,5", "fast27", [0, 10, 999]):
    fast = full.respace(spec)
    np.testing.assert_allclose(fast.alphas_cumprod, full.alphas_cumprod[fast.timestep_map], rtol=1e-6)
    assert fast.timestep_map[0] == 0
  assert len(full.respace("fast27").timestep_map) == 27
  assert full.respace("25").timestep_map[-1] == 999
  assert list(full.respace("ddim4").timestep_map) == [0, 250, 500, 750]


@pytest.mark.parametrize("stage", ["prior", "decoder", "sr_64_256", "sr_256_1024"])
@pytest.mark.parametrize("flavour", ["karlo", "paper"])
def test_stage_configs_build_their_processes_and_samplers(stage, flavour):
  cfg = D.diffusion_config(stage, flavour)
  process = D.GaussianDiffusion.from_config(cfg)
  assert process.num_timesteps == 1000
  fast = process.respace(cfg.sample.steps)
  assert 1 <= fast.num_timesteps <= 250
  assert cfg.sample.sampler in ("ddpm", "ddim")
  assert (process.variance == "learned_range") == (cfg.loss == "hybrid")


def test_config_presets_match_the_published_numbers():
  assert D.diffusion_config("prior").prediction == "x0"
  assert D.diffusion_config("decoder", "paper").sample.steps == "250"
  assert D.diffusion_config("decoder", "paper").sample.guidance_scale == 1.25
  assert D.diffusion_config("decoder").sample.guidance_scale == 8.0
  assert D.diffusion_config("prior").sample.guidance_scale == 4.0
  assert D.diffusion_config("sr_256_1024").schedule == "linear"
  with pytest.raises(ValueError, match="unknown diffusion stage"):
    D.diffusion_config("upsampler")
