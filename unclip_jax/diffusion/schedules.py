"""Beta schedules: the noise added at each of the T training steps.

Computed in float64 NumPy once, at construction time, so every later constant (cumulative products,
posterior coefficients, their logs) is as exact as the float32 arithmetic of the sampler allows.
The names follow guided-diffusion and diffusers so configs from either read naturally here.
"""

from __future__ import annotations

import math

import numpy as np


def linear(num_steps: int) -> np.ndarray:
  """Ho et al.'s linear schedule, 1e-4 to 0.02 at T=1000, rescaled for other T (guided-diffusion)."""
  scale = 1000.0 / num_steps
  return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def betas_for_alpha_bar(num_steps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
  """Discretises a continuous alpha_bar(t), t in [0, 1], into T betas, each capped at `max_beta`."""
  betas = [min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
           for i in range(num_steps)]
  return np.asarray(betas, dtype=np.float64)


def cosine(num_steps: int) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule (diffusers' "squaredcos_cap_v2"): unCLIP's default."""
  return betas_for_alpha_bar(num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)


def scaled_linear(num_steps: int) -> np.ndarray:
  """Linear in sqrt(beta) from 0.00085 to 0.012 (latent diffusion); offered for completeness."""
  return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_steps, dtype=np.float64) ** 2


def sigmoid(num_steps: int) -> np.ndarray:
  """GeoDiff's sigmoid schedule between 1e-4 and 0.02 (diffusers' "sigmoid")."""
  return 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_steps, dtype=np.float64))) * (0.02 - 1e-4) + 1e-4


SCHEDULES = {
    "linear": linear,
    "cosine": cosine,
    "squaredcos_cap_v2": cosine,
    "scaled_linear": scaled_linear,
    "sigmoid": sigmoid,
}


def get_betas(name: str, num_steps: int = 1000) -> np.ndarray:
  """The betas of schedule `name` over `num_steps` training steps."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown beta schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"the number of diffusion steps must be a positive integer, got {num_steps!r}")
  return SCHEDULES[name](int(num_steps))
