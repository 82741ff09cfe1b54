"""Gaussian diffusion in pure JAX: schedules, the forward/reverse process, losses, respacing, samplers.

Nothing here knows about models: a model is any function `model_fn(x_t, t, cond) -> output`. Typical use:

    process = GaussianDiffusion.from_config(config.diffusion)          # T training steps
    terms = training_losses(process, lambda x, t: net(x, t, c), x0, t, noise, loss=config.diffusion.loss)
    fast = process.respace(config.diffusion.sample.steps)             # e.g. "25", "ddim50"
    images = sample(fast, net_fn, (B, 64, 64, 3), key, cond=c, uncond=u, guidance_scale=8.0)
    x_T = ddim_invert(fast, net_fn, images, cond=c, uncond=u, guidance_scale=8.0)  # DDIM latents of images
"""

from unclip_jax.diffusion.config import diffusion_config
from unclip_jax.diffusion.gaussian import GaussianDiffusion, mean_flat
from unclip_jax.diffusion.inversion import ddim_inversion_step, ddim_invert
from unclip_jax.diffusion.guidance import (check_guidance_scale, clip_x0, dynamic_threshold, guided_model_fn,
                                           make_x0_denoiser)
from unclip_jax.diffusion.losses import (discretized_gaussian_log_likelihood, normal_kl, training_losses,
                                         vb_terms_bpd)
from unclip_jax.diffusion.respace import space_timesteps
from unclip_jax.diffusion.samplers import (Trajectory, ddim_step, ddpm_step, denoising_step, sample,
                                           sampling_keys)
from unclip_jax.diffusion.schedules import SCHEDULES, get_betas
from unclip_jax.diffusion.timestep_sampling import (TIMESTEP_SAMPLERS, LossHistory, init_loss_history,
                                                    sample_timesteps, update_loss_history)

__all__ = [
    "GaussianDiffusion", "LossHistory", "SCHEDULES", "TIMESTEP_SAMPLERS", "Trajectory", "check_guidance_scale", "clip_x0",
    "ddim_invert", "ddim_inversion_step", "ddim_step", "ddpm_step", "denoising_step", "diffusion_config", "discretized_gaussian_log_likelihood",
    "dynamic_threshold", "get_betas", "guided_model_fn", "init_loss_history", "make_x0_denoiser", "mean_flat",
    "normal_kl", "sample", "sample_timesteps", "sampling_keys", "space_timesteps", "training_losses",
    "update_loss_history", "vb_terms_bpd",
]
