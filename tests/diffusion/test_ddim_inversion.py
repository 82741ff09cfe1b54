"""DDIM inversion against known answers: for Gaussian data N(μ, s²) the optimal model is known in closed
form (`unclip_jax.diffusion.oracle`), and so is the DDIM ODE's map from x0 to x_T: it keeps the standardised
value, x_t = sqrt(ᾱ)·μ + sqrt(ᾱ·s² + 1 − ᾱ)·(x0 − μ)/s. The tolerances below are measured on N = 4096
samples with the decoder's cosine schedule, with margin; what each one catches is said next to it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.diffusion import GaussianDiffusion, diffusion_config, get_betas, guided_model_fn, sample
from unclip_jax.diffusion.inversion import ddim_invert, ddim_inversion_step
from unclip_jax.diffusion.oracle import gaussian_optimal_model

MU = np.array([0.5, -0.3, 0.0], np.float32)
S = np.array([0.3, 0.6, 1.0], np.float32)  # the last feature is standard normal: see the round-trip test
N = 4096
X0 = MU + S * np.random.default_rng(0).normal(size=(N, 3)).astype(np.float32)

PROCESSES = {  # name -> (schedule, prediction, variance)
    "decoder": None,  # cosine, eps, learned_range: the oracle also outputs the variance half
    "prior": None,  # cosine, x0, fixed_small
    "v": ("cosine", "v", "fixed_small"),
}


def make_process(name: str, spacing: str) -> GaussianDiffusion:
  if PROCESSES[name] is None:
    return GaussianDiffusion.from_config(diffusion_config(name)).respace(spacing)
  schedule, prediction, variance = PROCESSES[name]
  return GaussianDiffusion.from_betas(get_betas(schedule, 1000), prediction=prediction,
                                      variance=variance).respace(spacing)


@functools.lru_cache(maxsize=None)
def invert_and_decode(name: str, spacing: str):
  """(x_T, decoded x0) for X0 under the oracle of process `name` respaced to `spacing`."""
  process = make_process(name, spacing)
  model = gaussian_optimal_model(process, MU, S)
  x_T = jax.jit(lambda x: ddim_invert(process, model, x))(jnp.asarray(X0))
  decoded = jax.jit(lambda z: sample(process, model, X0.shape, jax.random.key(0), sampler="ddim", eta=0.0,
                                     x_T=z))(x_T)
  return np.asarray(x_T), np.asarray(decoded)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_inversion_then_ddim_decoding_reconstructs_the_data(name):
  _, decoded = invert_and_decode(name, "ddim200")
  err = np.abs(decoded - X0)
  # Measured at 200 steps, identical for eps, x0 and v: max 0.027, mean 0.0046.
  assert err.max() < 0.05 and err.mean() < 0.01, (err.max(), err.mean())
  # For standard-normal data the ODE barely moves x (x_t stays N(0, 1)), and with the model evaluated at
  # the index it moves to each inversion step undoes its sampler step to third order: measured 4e-4.
  # Evaluating at index i-1 or i+1 instead gives about 0.04 here (and 1.5x the overall error above).
  assert err[:, 2].max() < 2e-3, err[:, 2].max()


@pytest.mark.parametrize("name", list(PROCESSES))
def test_fewer_steps_reconstruct_worse_but_boundedly(name):
  fine = np.abs(invert_and_decode(name, "ddim200")[1] - X0)
  coarse = np.abs(invert_and_decode(name, "ddim25")[1] - X0)
  # Measured mean 0.0046 -> 0.025 and max 0.027 -> 0.18: a first-order scheme, its error grows with the step.
  # Reading an x0 or v output at x's own noise level (diffusers' inverse scheduler) gives max 0.85 / 0.31 here.
  assert coarse.mean() > 3 * fine.mean()
  assert coarse.max() < 0.3 and coarse.mean() < 0.05, (coarse.max(), coarse.mean())


def test_inverted_latents_follow_the_exact_ode_map_and_are_standard_normal():
  x_T, _ = invert_and_decode("decoder", "ddim200")
  abar_T = make_process("decoder", "ddim200").alphas_cumprod[-1]
  exact = np.sqrt(abar_T) * MU + np.sqrt(abar_T * S ** 2 + 1 - abar_T) * (X0 - MU) / S
  err = np.abs(x_T - exact)
  # Measured max 0.048, mean 0.013 (the inversion's own discretisation error, not a round trip: it would
  # catch a bug shared by the sampler and the inversion). Mixing up ᾱ and ᾱ_prev gives max 3.1.
  assert err.max() < 0.1 and err.mean() < 0.03, (err.max(), err.mean())
  # The ODE carries the data distribution to N(0, I): measured |mean| <= 0.017, |std − 1| <= 0.017.
  np.testing.assert_array_less(np.abs(x_T.mean(0)), 0.05)
  np.testing.assert_array_less(np.abs(x_T.std(0) - 1), 0.04)


# ------------------------------------------------------------------------------------------------------
# Conditioning, guidance, learned variance, jit


def tiny_net(out_channels=3, seed=0):
  """A fixed nonlinear 'network' of (x, t, cond) in which the conditioning matters."""
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(0, 0.3, (3, out_channels)), jnp.float32)
  v = jnp.asarray(rng.normal(0, 0.3, (4, out_channels)), jnp.float32)

  def fn(x, t, cond):
    h = jnp.einsum("bhwc,cd->bhwd", x, w) + (cond @ v)[:, None, None, :] + (t / 1000.0)[:, None, None, None]
    return 0.5 * jnp.tanh(h)

  return fn


SHAPE = (2, 4, 4, 3)
IMAGES = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, SHAPE), jnp.float32)
COND = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4)), jnp.float32)
UNCOND = jnp.zeros((2, 4), jnp.float32)


def small_process(variance="fixed_small", spacing="10"):
  return GaussianDiffusion.from_betas(get_betas("cosine"), variance=variance).respace(spacing)


def test_guidance_scale_one_equals_the_unguided_conditional_inversion():
  process, net = small_process(), tiny_net()
  guided = ddim_invert(process, net, IMAGES, cond=COND, uncond=UNCOND, guidance_scale=1.0)
  plain = ddim_invert(process, net, IMAGES, cond=COND)
  np.testing.assert_allclose(np.asarray(guided), np.asarray(plain), rtol=1e-6, atol=1e-6)
  strong = ddim_invert(process, net, IMAGES, cond=COND, uncond=UNCOND, guidance_scale=5.0)
  assert np.abs(np.asarray(strong) - np.asarray(plain)).max() > 1e-2  # guidance does something
  other = ddim_invert(process, net, IMAGES, cond=-COND)
  assert np.abs(np.asarray(other) - np.asarray(plain)).max() > 1e-2  # so does the conditioning


def test_guided_inversion_round_trips_with_the_same_guidance():
  """What unCLIP does: invert and decode with the same embedding and guidance. The model is the oracle of
  data whose mean depends on `cond`, so guidance mixes two consistent predictions, as a trained one does.
  (A toy net whose eps barely depends on x does not round-trip: the sampler then amplifies latent errors
  by up to 1/sqrt(ᾱ_T), and the cosine schedule's last steps, t >~ 990, are huge jumps in noise level.)"""
  process = make_process("decoder", "ddim200")
  shift = jnp.asarray(np.random.default_rng(3).normal(0, 0.5, (4, 3)), jnp.float32)

  def net(x, t, cond):
    return gaussian_optimal_model(process, MU + 0.5 * jnp.tanh(cond @ shift)[:, None, None, :], S)(x, t)

  images = (MU + 0.5 * jnp.tanh(COND @ shift)[:, None, None, :]
            + S * jnp.asarray(np.random.default_rng(4).normal(size=SHAPE), jnp.float32))
  kwargs = dict(cond=COND, uncond=UNCOND, guidance_scale=3.0)
  x_T = jax.jit(lambda x: ddim_invert(process, net, x, **kwargs))(images)
  decoded = jax.jit(lambda z: sample(process, net, SHAPE, jax.random.key(0), sampler="ddim", x_T=z, **kwargs))(x_T)
  # Measured max 0.053 at 200 steps (0.014 at 1000); x_T is far from the images and from the unguided
  # latent (3.3), so neither the round trip nor the guidance is vacuous.
  np.testing.assert_allclose(np.asarray(decoded), np.asarray(images), atol=0.1)
  assert np.abs(np.asarray(x_T) - np.asarray(images)).max() > 1.0
  plain = ddim_invert(process, net, images, cond=COND)
  assert np.abs(np.asarray(x_T) - np.asarray(plain)).max() > 1.0


def test_learned_variance_inversion_uses_only_the_mean_half():
  process = small_process("learned_range")
  net = tiny_net(out_channels=6)

  def other_variance(x, t, cond):
    out = net(x, t, cond)
    return jnp.concatenate([out[..., :3], -3.0 * out[..., 3:] + 1.0], -1)

  for kwargs in (dict(cond=COND), dict(cond=COND, uncond=UNCOND, guidance_scale=4.0)):
    a = ddim_invert(process, net, IMAGES, **kwargs)
    b = ddim_invert(process, other_variance, IMAGES, **kwargs)
    assert a.shape == SHAPE and np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_inversion_jits_and_records_its_trajectory():
  process, net = small_process(spacing="7"), tiny_net()
  eager = ddim_invert(process, net, IMAGES, cond=COND, uncond=UNCOND, guidance_scale=2.0)
  jitted, trajectory = jax.jit(lambda x, c: ddim_invert(process, net, x, cond=c, uncond=UNCOND, guidance_scale=2.0,
                                                        return_trajectory=True))(IMAGES, COND)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-5)
  assert jitted.dtype == jnp.float32 and trajectory.shape == (7,) + SHAPE
  np.testing.assert_array_equal(np.asarray(trajectory[-1]), np.asarray(jitted))
  # Least noisy first: the first entry is one step from the images, taken at index 0.
  guided = guided_model_fn(net, COND, UNCOND, 2.0)
  index = jnp.zeros((2,), jnp.int32)
  first = ddim_inversion_step(process, guided(IMAGES, process.model_timesteps(index)), IMAGES, index)
  np.testing.assert_allclose(np.asarray(trajectory[0]), np.asarray(first), rtol=1e-5, atol=1e-5)


def test_bad_input_raises_clear_value_errors():
  process, net = small_process(), tiny_net()
  with pytest.raises(ValueError, match="x0 must have a batch axis"):
    ddim_invert(process, net, jnp.zeros((16,)), cond=COND)
  with pytest.raises(ValueError, match="guidance scale must be a finite number"):
    ddim_invert(process, net, IMAGES, cond=COND, uncond=UNCOND, guidance_scale=float("nan"))
