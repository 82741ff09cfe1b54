"""Super-resolution configs. The argument picks flavour and stage: `FLAVOUR[_STAGE]`.

    FLAVOUR  tiny | demo | karlo | paper
    STAGE    64_256 (default) | 256_1024     (Karlo released only 64→256; demo has only the first slot)

e.g. `tiny`, `tiny_256_1024`, `karlo_64_256`, `paper_256_1024`. Run:

    python -m unclip_jax.train --config configs/upsampler.py:karlo_64_256 --workdir /tmp/sr_64_256
    python -m unclip_jax.train --config configs/upsampler.py:demo --workdir runs/demo/sr --data_dir runs/demo/data

`demo` fills the pipeline's first upsampler slot (`sr_64_256`) with a 32→64 model (channels 32/64/64, 1 res
block, scale-shift) after the 32 px `configs/decoder.py:demo`, trained on 32 px crops of
`prepare shapes --image_size 64` (50,000 scenes).

`config.model` holds the fields of `unclip_jax.models.unet.UNet` for an attention-free UNet whose input is
the noisy high-resolution image concatenated with the upsampled low-resolution one (6 channels); build
it with `unclip_jax.models.unet.unet_from_config(config.model, decoder=False)`. Sizes:
  * karlo_64_256: diffusers' super_res_first/_last: 320 ch, mult 1,2,3,4, 3 res blocks, plain (not
    scale-shift) time conditioning, as diffusers' conversion builds it; ≈0.70B each.
  * paper_64_256: 320 ch, depth 3, mult 1,2,3,4, scale-shift (ADM), ≈0.70B.
  * paper_256_1024: 192 ch, depth 2, mult 1,1,2,2,4,4, scale-shift, ≈0.30B.
`config.degrade` is the conditioning corruption of `unclip_jax.data.degrade`: "blur" (σ 0.6, kernel 3)
for 64→256, "bsr" for 256→1024. `config.diffusion` is `diffusion_config("sr_64_256" | "sr_256_1024", ...)`
(the demo predicts v instead of ε).
"""

from __future__ import annotations

import ml_collections

from unclip_jax.diffusion.config import diffusion_config
from unclip_jax.models.presets import model_config, parse_upsampler
from unclip_jax.train.optim import optim_config
from unclip_jax.train.run_config import data_config, stage_header, train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  flavour, stage = parse_upsampler(arg)
  config = stage_header(f"sr_{stage}", f"{flavour}_{stage}")
  config.model = model_config("upsampler", f"{flavour}_{stage}")
  config.diffusion = diffusion_config(f"sr_{stage}", "paper" if flavour == "paper" else "karlo")

  d = ml_collections.ConfigDict()
  if stage == "64_256":
    d.kind = "blur"  # unclip_jax.data.degrade.gaussian_blur_augment
    d.sigma, d.kernel_size = 0.6, 3
  else:
    d.kind = "bsr"  # unclip_jax.data.degrade.bsr_degrade
    d.blur_sigma_range, d.blur_kernel = (0.2, 2.0), 7
    d.down_factors, d.noise_std_range = (1, 2, 4), (0.0, 0.08)
    d.jpeg_prob = 0.0
  config.degrade = d

  # Paper Table 3: 64→256 batch 1024, lr 1.2e-4; 256→1024 batch 512, lr 1.0e-4; 1M iterations; EMA 0.9999;
  # both train on random crops of 1/4 the image size.
  config.optim = optim_config(lr=1.2e-4 if stage == "64_256" else 1.0e-4, warmup_steps=10_000, b2=0.999,
                              eps=1e-8, ema_decay=0.9999)
  # crop_fraction: train on random crops of this fraction of the image side (convolutions only).
  config.train = train = train_config(1024 if stage == "64_256" else 512, 1_000_000, crop_fraction=0.25)
  config.data = data = data_config("image_text", "", image_size=config.model.image_size)

  if flavour == "tiny":
    data.name, data.config = "shapes", "64"
    train.crop_fraction = 0.5  # 32 px crops of the 64 px images, as the paper trains on crops
    train.batch_size, train.steps = 16, 200
    config.optim.update(dict(lr=1e-3, warmup_steps=10, ema_decay=0.99))
    train.log_every, train.checkpoint_every = 50, 100
  elif flavour == "demo":
    data.name, data.config = "shapes", "64"  # `prepare shapes --image_size 64`: 50,000 captioned 64x64 scenes
    train.crop_fraction = 0.5  # 32 px crops of the 64 px images
    # 600 steps left it the pipeline's bottleneck (single-object accuracy 25% where bicubic upsampling of the
    # same 32 px samples gave 62%: blobby circles, small triangles erased); after 3000 it drew every real 32 px
    # render right (`evaluate --suite stages`: 1.00 seen and held-out), so 2000 (about 26 min on 2 idle cores)
    # keep the whole recipe inside 2 hours; the stages row of each run checks it.
    train.batch_size, train.steps = 32, 2000
    config.optim.update(dict(lr=5e-4, warmup_steps=50, ema_decay=0.995))
    train.log_every, train.checkpoint_every = 50, 200
    # v-prediction, as the demo decoder: an ε-model's first steps set the image's mean colour at random
    # and this small model kept it (black backgrounds came out grey-purple even from real 32 px inputs).
    config.diffusion.prediction = "v"
  return config
