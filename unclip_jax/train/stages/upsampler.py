"""Super-resolution stages (64→256, 256→1024): ε-prediction on the high-resolution image, conditioned on
its degraded, downsampled and re-upsampled copy (noise-conditioning augmentation, unCLIP §C)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unclip_jax import diffusion
from unclip_jax.data import degrade
from unclip_jax.errors import UserError
from unclip_jax.models import unet as unet_model
from unclip_jax.train.stages.base import Stage, split_rngs


def low_res_condition(key, images, config):
  """The conditioning image: downsample to the low resolution, degrade, upsample back (bicubic)."""
  m, d = config.model, config.degrade
  low = jax.image.resize(images, (images.shape[0], m.low_res_size, m.low_res_size, 3), "linear", antialias=True)
  if d.kind == "blur":
    low = degrade.gaussian_blur_augment(key, low, sigma=d.sigma, kernel_size=d.kernel_size)
  elif d.kind == "bsr":
    low = degrade.bsr_degrade(key, low, blur_sigma_range=tuple(d.blur_sigma_range), blur_kernel=d.blur_kernel,
                              down_factors=tuple(d.down_factors), noise_std_range=tuple(d.noise_std_range),
                              jpeg_prob=d.jpeg_prob)
  elif d.kind != "none":
    raise UserError(f"unknown degradation {d.kind!r}; use blur, bsr or none")
  return jax.image.resize(jnp.clip(low, -1, 1), images.shape, "cubic")


def random_crop(key, *images, size: int):
  """The same random `size`×`size` window of each image in `images` (one window per example)."""
  b, h, w = images[0].shape[:3]
  ky, kx = jax.random.split(key)
  ys = jax.random.randint(ky, (b,), 0, h - size + 1)
  xs = jax.random.randint(kx, (b,), 0, w - size + 1)
  crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (size, size, im.shape[-1])))
  return tuple(crop(im, ys, xs) for im in images)


class UpsamplerStage(Stage):
  kind = "upsampler"

  def __init__(self, config):
    super().__init__(config)
    self.build_diffusion_model()
    fraction = config.train.get("crop_fraction", 1.0)
    self.crop = int(round(config.model.image_size * fraction))
    if not 0 < fraction <= 1 or self.crop < 8:
      raise UserError(f"train.crop_fraction {fraction} gives {self.crop}px crops; use a fraction in (0, 1]")

  def check_example(self, example):
    if example["image"].shape[0] != self.config.model.image_size:
      raise UserError(f"the dataset's images are {example['image'].shape[0]}px; this upsampler trains on "
                      f"{self.config.model.image_size}px images")

  def init_params(self, rng):
    return unet_model.init_unet(self.model, rng, image_size=self.crop)["params"]

  def batch_spec(self, n):
    size = self.config.model.image_size
    return {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)}

  def loss(self, params, extra, batch, rng):
    keys = split_rngs(rng, ("degrade", "crop", "t", "noise", "dropout"))
    x0 = batch["image"]
    cond = low_res_condition(keys["degrade"], x0, self.config)
    if self.crop < x0.shape[1]:
      x0, cond = random_crop(keys["crop"], x0, cond, size=self.crop)
    t, weights = self.timesteps(keys["t"], x0.shape[0], extra)
    noise = jax.random.normal(keys["noise"], x0.shape)

    def model_fn(x_t, timesteps):
      return self.model.apply({"params": params}, jnp.concatenate([x_t, cond], -1), timesteps,
                              deterministic=False, rngs={"dropout": keys["dropout"]})

    terms = diffusion.training_losses(self.process, model_fn, x0, t, noise, loss=self.config.diffusion.loss)
    loss = jnp.mean(terms["loss"] * weights)
    return loss, self.timestep_metrics(loss, t, terms["loss"], mse=jnp.mean(terms["mse"]))

  def export(self, params, extra):
    del extra
    return "upsampler", params, {"preset": self.config.get("preset", ""), "stage": self.config.stage,
                                 "source": "training", "model": self.config.model.to_dict(),
                                 "diffusion": self.config.diffusion.to_dict(), "degrade": self.config.degrade.to_dict()}
