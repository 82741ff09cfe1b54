"""The Gaussian diffusion process: forward noising, the true posterior, and the model's reverse step.

`GaussianDiffusion` holds the float64 constants of one process (the T-step training process, or a
respaced subset of it) and turns a network output into the quantities samplers and losses need.
Arrays are batch-first with features last (NHWC images, (B, D) embeddings), so a learned variance is
the second half of the last axis. Everything here is a pure function of its inputs and traces under
`jit`; the constants enter the program as literals.

Conventions (improved DDPM / guided-diffusion):
  * `index` i is a position in this process, 0 (least noisy) .. num_timesteps-1;
    `timestep_map[i]` is the training timestep the network is told (they differ once respaced).
  * prediction "eps": the network predicts the noise; "x0": the clean sample; "v": sqrt(a)·eps − sqrt(1−a)·x0.
  * variance "fixed_small": the posterior variance beta~_t; "fixed_large": beta_t; "learned_range": the
    network outputs v in [-1, 1] per element and log σ² = ((v+1)/2)·log beta_t + ((1−v)/2)·log beta~_t;
    "learned": the network outputs log σ² directly.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import respace as respace_lib
from unclip_jax.diffusion import schedules

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range", "learned")


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """One diffusion process. Build it with `from_config` / `from_betas`; respace with `respace`."""

  betas: np.ndarray
  timestep_map: np.ndarray
  prediction: str = "eps"
  variance: str = "fixed_small"
  num_train_timesteps: int = 0

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"unknown prediction {self.prediction!r}; choose one of: {', '.join(PREDICTIONS)}")
    if self.variance not in VARIANCES:
      raise ValueError(f"unknown variance {self.variance!r}; choose one of: {', '.join(VARIANCES)}")
    betas = np.asarray(self.betas, dtype=np.float64)
    if betas.ndim != 1 or not len(betas) or np.any(betas <= 0) or np.any(betas > 1):
      raise ValueError("betas must be a non-empty 1-D array with every value in (0, 1]")
    object.__setattr__(self, "betas", betas)
    object.__setattr__(self, "timestep_map", np.asarray(self.timestep_map, dtype=np.int32))
    if not self.num_train_timesteps:
      object.__setattr__(self, "num_train_timesteps", len(betas))
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    consts = dict(
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_variance=post_var,
        # beta~_0 is 0; the log is clipped to beta~_1 there, as the last step adds no noise anyway.
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])) if len(betas) > 1
        else np.log(betas),
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        log_betas=np.log(betas),
        fixed_large_log_variance=np.log(np.append(post_var[1], betas[1:])) if len(betas) > 1 else np.log(betas),
    )
    for name, value in consts.items():
      object.__setattr__(self, name, value)

  # ----------------------------------------------------------------------------------------------------
  # Construction
  @classmethod
  def from_betas(cls, betas, *, prediction: str = "eps", variance: str = "fixed_small") -> "GaussianDiffusion":
    betas = np.asarray(betas, dtype=np.float64)
    return cls(betas=betas, timestep_map=np.arange(len(betas)), prediction=prediction, variance=variance)

  @classmethod
  def from_config(cls, config) -> "GaussianDiffusion":
    """The training process of a `diffusion_config(...)` sub-config."""
    betas = schedules.get_betas(config.schedule, config.timesteps)
    return cls.from_betas(betas, prediction=config.prediction, variance=config.variance)

  def respace(self, spec: str | int | Sequence[int]) -> "GaussianDiffusion":
    """The process that visits only the training steps chosen by `spec` (see `respace.space_timesteps`)."""
    if not self.is_training_process:
      raise ValueError("respace the T-step training process, not an already respaced one")
    kept = respace_lib.space_timesteps(self.num_timesteps, spec)
    return GaussianDiffusion(betas=respace_lib.respaced_betas(self.alphas_cumprod, kept),
                             timestep_map=np.asarray(kept), prediction=self.prediction,
                             variance=self.variance, num_train_timesteps=self.num_train_timesteps)

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)

  @property
  def is_training_process(self) -> bool:
    return self.num_timesteps == self.num_train_timesteps and bool(
        np.all(self.timestep_map == np.arange(self.num_timesteps)))

  @property
  def learns_variance(self) -> bool:
    return self.variance in ("learned_range", "learned")

  # ----------------------------------------------------------------------------------------------------
  # Helpers
  def _at(self, name: str, index, like: jax.Array) -> jax.Array:
    """Constant `name` at per-example `index` (shape (B,)), shaped to broadcast against `like`."""
    table = jnp.asarray(getattr(self, name), dtype=jnp.float32)
    index = jnp.asarray(index)
    values = table[index]
    if values.ndim == 0:
      return values
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))

  def model_timesteps(self, index) -> jax.Array:
    """The training timestep the network must be given at process index `index`."""
    return jnp.asarray(self.timestep_map)[jnp.asarray(index)]

  @staticmethod
  def _check_batch(x: jax.Array, index, what: str) -> None:
    if x.ndim < 2:
      raise ValueError(f"{what} must have a batch axis and at least one feature axis, got shape {x.shape}")
    index = jnp.asarray(index)
    if index.ndim > 1 or (index.ndim == 1 and index.shape[0] != x.shape[0]):
      raise ValueError(f"timesteps must be a scalar or have shape ({x.shape[0]},), got {index.shape}")

  # ----------------------------------------------------------------------------------------------------
  # Forward process and true posterior
  def q_mean_variance(self, x0, index):
    """Mean, variance and log-variance of q(x_t | x_0)."""
    self._check_batch(x0, index, "x0")
    mean = self._at("sqrt_alphas_cumprod", index, x0) * x0
    var = 1.0 - self._at("alphas_cumprod", index, x0)
    return mean, var, jnp.log(var)

  def q_sample(self, x0, index, noise):
    """Draws x_t ~ q(x_t | x_0) with the given standard-normal `noise`."""
    self._check_batch(x0, index, "x0")
    if noise.shape != x0.shape:
      raise ValueError(f"noise shape {noise.shape} must equal x0 shape {x0.shape}")
    return (self._at("sqrt_alphas_cumprod", index, x0) * x0
            + self._at("sqrt_one_minus_alphas_cumprod", index, x0) * noise)

  def q_posterior_mean_variance(self, x0, x_t, index):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    self._check_batch(x_t, index, "x_t")
    if x0.shape != x_t.shape:
      raise ValueError(f"x0 shape {x0.shape} must equal x_t shape {x_t.shape}")
    mean = self._at("posterior_mean_coef1", index, x_t) * x0 + self._at("posterior_mean_coef2", index, x_t) * x_t
    return (mean, self._at("posterior_variance", index, x_t),
            self._at("posterior_log_variance_clipped", index, x_t))

  # ----------------------------------------------------------------------------------------------------
  # Parameterisations
  def x0_from_eps(self, x_t, index, eps):
    return self._at("sqrt_recip_alphas_cumprod", index, x_t) * x_t - self._at(
        "sqrt_recipm1_alphas_cumprod", index, x_t) * eps

  def eps_from_x0(self, x_t, index, x0):
    return (self._at("sqrt_recip_alphas_cumprod", index, x_t) * x_t - x0) / self._at(
        "sqrt_recipm1_alphas_cumprod", index, x_t)

  def x0_from_v(self, x_t, index, v):
    return self._at("sqrt_alphas_cumprod", index, x_t) * x_t - self._at(
        "sqrt_one_minus_alphas_cumprod", index, x_t) * v

  def v_target(self, x0, index, noise):
    """The v-prediction target sqrt(abar)·eps − sqrt(1−abar)·x0 (Salimans & Ho)."""
    return self._at("sqrt_alphas_cumprod", index, x0) * noise - self._at(
        "sqrt_one_minus_alphas_cumprod", index, x0) * x0

  def split_output(self, model_output, x_t):
    """(mean part, variance part or None) of a network output, checking its shape."""
    if model_output.ndim != x_t.ndim or model_output.shape[:-1] != x_t.shape[:-1]:
      raise ValueError(f"model output shape {model_output.shape} does not match x_t shape {x_t.shape}")
    channels = x_t.shape[-1]
    if self.learns_variance:
      if model_output.shape[-1] != 2 * channels:
        raise ValueError(f"a {self.variance} model must output {2 * channels} channels (mean and variance "
                         f"halves), got {model_output.shape[-1]}")
      return model_output[..., :channels], model_output[..., channels:]
    if model_output.shape[-1] != channels:
      raise ValueError(f"model output has {model_output.shape[-1]} channels, x_t has {channels}")
    return model_output, None

  def predict_x0(self, mean_output, x_t, index):
    """x0 implied by the network's mean output under this process's parameterisation."""
    if self.prediction == "eps":
      return self.x0_from_eps(x_t, index, mean_output)
    if self.prediction == "x0":
      return mean_output
    return self.x0_from_v(x_t, index, mean_output)

  def model_log_variance(self, variance_output, x_t, index):
    """Log-variance of p(x_{t-1} | x_t) for this process's variance type."""
    if self.variance == "fixed_small":
      return jnp.broadcast_to(self._at("posterior_log_variance_clipped", index, x_t), x_t.shape)
    if self.variance == "fixed_large":
      return jnp.broadcast_to(self._at("fixed_large_log_variance", index, x_t), x_t.shape)
    if self.variance == "learned":
      return variance_output
    min_log = self._at("posterior_log_variance_clipped", index, x_t)
    max_log = self._at("log_betas", index, x_t)
    frac = (variance_output + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log

  def p_mean_variance(self, model_output, x_t, index, *, denoise_x0=None):
    """The reverse step's Gaussian p(x_{t-1} | x_t) from a network output.

    `denoise_x0`, if given, maps the predicted x0 before the mean is formed (clipping, thresholding).
    Returns a dict with mean, log_variance, pred_x0 and pred_eps (the latter consistent with the
    possibly clipped pred_x0, as DDIM needs).
    """
    self._check_batch(x_t, index, "x_t")
    model_output = model_output.astype(jnp.float32)
    mean_output, variance_output = self.split_output(model_output, x_t)
    log_variance = self.model_log_variance(variance_output, x_t, index)
    pred_x0 = self.predict_x0(mean_output, x_t, index)
    if denoise_x0 is not None:
      pred_x0 = denoise_x0(pred_x0)
    mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, index)
    return dict(mean=mean, log_variance=log_variance, pred_x0=pred_x0,
                pred_eps=self.eps_from_x0(x_t, index, pred_x0))


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))

