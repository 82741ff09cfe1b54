"""Parity with the PyTorch peers: diffusers' schedulers and OpenAI's guided-diffusion (PyPI:
guided-diffusion-sdk). Given identical model outputs and noise, one step of ours equals theirs.

Errors are relative (‖ours − theirs‖ / ‖theirs‖) and must be ≤ 1e-5, ours in float32. diffusers keeps
its schedule in float32, where 1 − ᾱ_t cancels badly near t = 0 (its posterior variance at t = 1 is off
by ~1e-3 relative); `float64_scheduler` therefore runs the peer's own step code on float64 tensors and
guided-diffusion's float64 betas, so the reference is the peer's formula evaluated exactly.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from tests import peers
from unclip_jax import diffusion as D

torch = peers.require("torch")
diffusers = peers.require("diffusers")
gd = peers.require("guided_diffusion.gaussian_diffusion")
gd_respace = peers.require("guided_diffusion.respace")
gd_losses = peers.require("guided_diffusion.losses")
gd_resample = peers.require("guided_diffusion.resample")

pytestmark = pytest.mark.peers
TOL = 1e-5


def rel_err(ours, theirs) -> float:
  ours = np.asarray(ours, np.float64)
  theirs = np.asarray(theirs.detach().numpy() if hasattr(theirs, "detach") else theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-12))


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def step_inputs(seed, channels=3, out_channels=None):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 4, 4, channels)).astype(np.float32)
  out = rng.standard_normal((2, 4, 4, out_channels or channels)).astype(np.float32)
  if out_channels and out_channels > channels:  # the variance half lives in [-1, 1]
    out[..., channels:] = np.tanh(out[..., channels:])
  noise = rng.standard_normal(x.shape).astype(np.float32)
  return x, out, noise


def float64_scheduler(sched):
  """Re-run a diffusers scheduler's arithmetic in float64 (see the module docstring)."""
  betas = torch.from_numpy(gd.get_named_beta_schedule("cosine", sched.config.num_train_timesteps))
  sched.betas = betas
  sched.alphas = 1.0 - betas
  sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
  sched.one = torch.tensor(1.0, dtype=torch.float64)
  if hasattr(sched, "final_alpha_cumprod"):
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
  return sched


def nchw64(x):
  return nchw(x).double()


def torch_generator_noise(seed, shape_nchw):
  """The noise diffusers' `randn_tensor` draws from a generator seeded with `seed`."""
  g = torch.Generator().manual_seed(seed)
  return torch.randn(shape_nchw, generator=g, dtype=torch.float64), torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------
# diffusers


@pytest.mark.parametrize("prediction,dprediction", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_step_matches_diffusers_ddpm_scheduler(prediction, dprediction, variance):
  sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                  prediction_type=dprediction, variance_type=variance, clip_sample=True)
  float64_scheduler(sched)
  process = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), prediction=prediction, variance=variance)
  for t in (999, 640, 123, 1, 0):
    x, out, _ = step_inputs(t)
    noise, gen = torch_generator_noise(t, (2, 3, 4, 4))
    ref = sched.step(nchw64(out), t, nchw64(x), generator=gen)
    ours, ours_x0 = D.ddpm_step(process, jnp.asarray(out), jnp.asarray(x), jnp.full((2,), t),
                                jnp.asarray(nhwc(noise), jnp.float32), denoise_x0=D.make_x0_denoiser(clip=1.0))
    assert rel_err(ours_x0, nhwc(ref.pred_original_sample)) < TOL
    assert rel_err(ours, nhwc(ref.prev_sample)) < TOL, t


@pytest.mark.parametrize("prediction,dprediction", [("eps", "epsilon"), ("v", "v_prediction")])
def test_respaced_ancestral_step_matches_diffusers_ddpm_with_fewer_steps(prediction, dprediction):
  sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                  prediction_type=dprediction, clip_sample=False)
  sched.set_timesteps(50)
  float64_scheduler(sched)
  process = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), prediction=prediction).respace("ddim50")
  assert list(process.timestep_map[::-1]) == [int(t) for t in sched.timesteps]
  for i, t in [(49, 980), (30, 600), (1, 20), (0, 0)]:
    x, out, _ = step_inputs(t)
    noise, gen = torch_generator_noise(t, (2, 3, 4, 4))
    ref = sched.step(nchw64(out), t, nchw64(x), generator=gen)
    ours, _ = D.ddpm_step(process, jnp.asarray(out), jnp.asarray(x), jnp.full((2,), i), jnp.asarray(nhwc(noise), jnp.float32))
    assert rel_err(ours, nhwc(ref.prev_sample)) < TOL, t


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_matches_diffusers_ddim_scheduler(eta, clip):
  sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                  clip_sample=clip, set_alpha_to_one=True, steps_offset=0)
  sched.set_timesteps(50)
  float64_scheduler(sched)
  process = D.GaussianDiffusion.from_betas(D.get_betas("cosine")).respace("ddim50")
  for i, t in [(49, 980), (25, 500), (3, 60), (0, 0)]:
    x, out, noise = step_inputs(100 + t)
    ref = sched.step(nchw64(out), t, nchw64(x), eta=eta, use_clipped_model_output=True,
                     variance_noise=nchw64(noise))
    ours, ours_x0 = D.ddim_step(process, jnp.asarray(out), jnp.asarray(x), jnp.full((2,), i), jnp.asarray(noise),
                                eta=eta, denoise_x0=D.make_x0_denoiser(clip=1.0 if clip else None))
    assert rel_err(ours_x0, nhwc(ref.pred_original_sample)) < TOL
    assert rel_err(ours, nhwc(ref.prev_sample)) < TOL, (t, eta)


def test_respaced_learned_range_step_matches_diffusers_unclip_scheduler():
  """The Karlo decoder's sampler: learned-range variance, 25 respaced ancestral steps."""
  sched = diffusers.UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon")
  sched.set_timesteps(25)
  float64_scheduler(sched)
  process = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), variance="learned_range").respace("25")
  timesteps = [int(t) for t in sched.timesteps]
  assert list(process.timestep_map[::-1]) == timesteps
  for i in (24, 17, 6, 1, 0):
    t = timesteps[24 - i]
    prev = timesteps[24 - i + 1] if i > 0 else None
    x, out, _ = step_inputs(200 + i, channels=3, out_channels=6)
    noise, gen = torch_generator_noise(i, (2, 3, 4, 4))
    ref = sched.step(nchw64(out), t, nchw64(x), prev_timestep=prev, generator=gen)
    ours, _ = D.ddpm_step(process, jnp.asarray(out), jnp.asarray(x), jnp.full((2,), i), jnp.asarray(nhwc(noise), jnp.float32),
                          denoise_x0=D.make_x0_denoiser(clip=1.0))
    assert rel_err(ours, nhwc(ref.prev_sample)) < TOL, t


def test_prior_step_matches_diffusers_unclip_scheduler_with_x0_prediction():
  """The Karlo prior's sampler: x0 prediction, fixed-small variance, clamp at ±5 (diffusers' value)."""
  sched = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                    clip_sample_range=5.0)
  sched.set_timesteps(25)
  float64_scheduler(sched)
  process = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), prediction="x0").respace("25")
  timesteps = [int(t) for t in sched.timesteps]
  rng = np.random.default_rng(0)
  for i in (24, 12, 0):
    t, prev = timesteps[24 - i], (timesteps[24 - i + 1] if i > 0 else None)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    out = 4 * rng.standard_normal((3, 16)).astype(np.float32)
    noise, gen = torch_generator_noise(i, (3, 16))
    ref = sched.step(torch.from_numpy(out).double(), t, torch.from_numpy(x).double(), prev_timestep=prev,
                     generator=gen)
    ours, _ = D.ddpm_step(process, jnp.asarray(out), jnp.asarray(x), jnp.full((3,), i), jnp.asarray(noise.numpy(), jnp.float32),
                          denoise_x0=D.make_x0_denoiser(clip=5.0))
    assert rel_err(ours, ref.prev_sample) < TOL, t


def test_dynamic_thresholding_matches_diffusers():
  sched = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0)
  x0 = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32) * np.array(
      [0.5, 2.0, 4.0, 1.1], np.float32)[:, None, None, None]
  ref = sched._threshold_sample(nchw64(x0))
  ours = D.dynamic_threshold(jnp.asarray(x0), 0.9, max_value=3.0)
  assert rel_err(ours, nhwc(ref)) < TOL


# ------------------------------------------------------------------------------------------------------
# guided-diffusion


def test_kl_and_discretized_likelihood_equal_guided_diffusion():
  rng = np.random.default_rng(0)
  m1, m2 = rng.standard_normal((2, 64)).astype(np.float32)
  v1, v2 = rng.uniform(-6, 1, (2, 64)).astype(np.float32)
  ref = gd_losses.normal_kl(*map(torch.from_numpy, (m1, v1, m2, v2)))
  assert rel_err(D.normal_kl(m1, v1, m2, v2), ref) < TOL
  # The decoder's t = 0 regime: means within a few levels of the data, log-scales around log(σ_1).
  x = np.round((rng.uniform(-1.2, 1.2, (4, 64)).clip(-1, 1) + 1) * 127.5) / 127.5 - 1  # 8-bit data, edge bins too
  means = x + 0.01 * rng.standard_normal(x.shape)
  log_scales = rng.uniform(-5.5, -1.0, x.shape)
  ref = gd_losses.discretized_gaussian_log_likelihood(torch.from_numpy(x), means=torch.from_numpy(means),
                                                      log_scales=torch.from_numpy(log_scales))  # float64
  ours = D.discretized_gaussian_log_likelihood(jnp.asarray(x, jnp.float32), means=jnp.asarray(means, jnp.float32),
                                               log_scales=jnp.asarray(log_scales, jnp.float32))
  assert np.any(x == -1) and np.any(x == 1)
  assert rel_err(ours, ref) < TOL


GD_MEAN = {"eps": gd.ModelMeanType.EPSILON, "x0": gd.ModelMeanType.START_X}
GD_VAR = {"fixed_small": gd.ModelVarType.FIXED_SMALL, "fixed_large": gd.ModelVarType.FIXED_LARGE,
          "learned_range": gd.ModelVarType.LEARNED_RANGE, "learned": gd.ModelVarType.LEARNED}


class _Net:
  """The same deterministic 'network' in both frameworks: a per-channel affine map of x and t, squashed."""

  def __init__(self, in_ch, out_ch, seed=0):
    rng = np.random.default_rng(seed)
    self.w = rng.uniform(0.2, 1.0, out_ch).astype(np.float32)
    self.b = rng.uniform(-1.0, 1.0, out_ch).astype(np.float32)
    self.in_ch = in_ch

  def jax(self, x, t):
    reps = len(self.w) // self.in_ch
    xx = jnp.concatenate([x] * reps, axis=-1)
    return jnp.tanh(xx * self.w + self.b * (t.astype(jnp.float32)[:, None, None, None] / 1000.0))

  def torch(self, x, t):
    reps = len(self.w) // self.in_ch
    xx = torch.cat([x] * reps, dim=1)
    w, b = torch.from_numpy(self.w)[None, :, None, None], torch.from_numpy(self.b)[None, :, None, None]
    return torch.tanh(xx * w + b * (t.float()[:, None, None, None] / 1000.0))


def _gd_process(prediction, variance, loss="mse"):
  betas = D.get_betas("cosine")
  loss_type = gd.LossType.RESCALED_MSE if loss == "hybrid" else gd.LossType.MSE
  return gd.GaussianDiffusion(betas=betas, model_mean_type=GD_MEAN[prediction], model_var_type=GD_VAR[variance],
                              loss_type=loss_type, rescale_timesteps=False)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range", "learned"])
def test_p_mean_variance_equals_guided_diffusion(prediction, variance):
  theirs = _gd_process(prediction, variance)
  ours = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), prediction=prediction, variance=variance)
  out_ch = 6 if ours.learns_variance else 3
  net = _Net(3, out_ch)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((4, 4, 4, 3)).astype(np.float32)
  t = np.array([0, 1, 500, 999])
  ref = theirs.p_mean_variance(net.torch, nchw(x), torch.from_numpy(t), clip_denoised=True)
  got = ours.p_mean_variance(net.jax(jnp.asarray(x), jnp.asarray(t)), jnp.asarray(x), jnp.asarray(t),
                             denoise_x0=D.make_x0_denoiser(clip=1.0))
  assert rel_err(got["pred_x0"], nhwc(ref["pred_xstart"])) < TOL
  assert rel_err(got["mean"], nhwc(ref["mean"])) < TOL
  assert rel_err(jnp.broadcast_to(got["log_variance"], x.shape), nhwc(ref["log_variance"].expand(4, 3, 4, 4))) < TOL


@pytest.mark.parametrize("prediction,variance,loss", [("eps", "fixed_small", "mse"), ("x0", "fixed_large", "mse"),
                                                      ("eps", "learned_range", "hybrid")])
def test_training_losses_equal_guided_diffusion(prediction, variance, loss):
  theirs = _gd_process(prediction, variance, loss)
  ours = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), prediction=prediction, variance=variance)
  net = _Net(3, 6 if ours.learns_variance else 3, seed=3)
  rng = np.random.default_rng(2)
  x0 = np.clip(rng.standard_normal((5, 4, 4, 3)) * 0.6, -1, 1).astype(np.float32)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  t = np.array([0, 1, 250, 700, 999])
  ref = theirs.training_losses(net.torch, nchw(x0), torch.from_numpy(t), noise=nchw(noise))
  got = D.training_losses(ours, net.jax, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise), loss=loss)
  assert rel_err(got["loss"], ref["loss"]) < TOL
  assert rel_err(got["mse"], ref["mse"]) < TOL
  if loss == "hybrid":
    assert rel_err(got["vb"], ref["vb"]) < TOL


@pytest.mark.parametrize("spec", ["25", "50", "250", "1000", "10,10,5", "7,3", "ddim25", "ddim50", "ddim100", "fast27"])
def test_space_timesteps_and_respaced_betas_equal_guided_diffusion(spec):
  if spec == "fast27":  # GLIDE's schedule, defined on top of guided-diffusion's sections
    kept = set(gd_respace.space_timesteps(1000, "10,10,3,2,2")) - {999} | {997}
  else:
    kept = gd_respace.space_timesteps(1000, spec)
  assert D.space_timesteps(1000, spec) == sorted(kept)
  theirs = gd_respace.SpacedDiffusion(kept, betas=D.get_betas("cosine"), model_mean_type=gd.ModelMeanType.EPSILON,
                                      model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
  ours = D.GaussianDiffusion.from_betas(D.get_betas("cosine")).respace(spec)
  np.testing.assert_allclose(ours.betas, theirs.betas, rtol=1e-12)
  assert list(ours.timestep_map) == list(theirs.timestep_map)


def test_loss_second_moment_sampler_equals_guided_diffusion(monkeypatch):
  monkeypatch.setattr(np, "int", int, raising=False)  # the peer predates NumPy 2 (np.int)

  class _T:
    num_timesteps = 20

  theirs = gd_resample.LossSecondMomentResampler(_T(), history_per_term=3)
  state = D.init_loss_history(20, history=3)
  rng = np.random.default_rng(0)
  for _ in range(12):
    t = rng.integers(0, 20, 16)
    losses = rng.uniform(0, 2, 16).astype(np.float32) * (1 + t / 10)
    theirs.update_with_all_losses(list(t), list(losses))
    state = D.update_loss_history(state, jnp.asarray(t), jnp.asarray(losses))
  np.testing.assert_allclose(np.asarray(state.losses), theirs._loss_history, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state.counts), theirs._loss_counts)
  from unclip_jax.diffusion.timestep_sampling import loss_second_moment_probs

  ref = theirs.weights() / theirs.weights().sum()
  assert rel_err(loss_second_moment_probs(state), ref) < TOL
