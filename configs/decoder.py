"""64px decoder configs: presets `tiny` (CPU tests), `demo` (the shapes demo pipeline of
`launch/train_demo.sh`), `karlo` (Kakao Brain's released decoder), `paper`.

Run:

    python -m unclip_jax.train --config configs/decoder.py:tiny --workdir /tmp/decoder_tiny
    python -m unclip_jax.train --config configs/decoder.py:demo --workdir runs/demo/decoder --data_dir runs/demo/data

`config.model` (`unclip_jax.models.presets`) holds the fields of `unclip_jax.models.unet.UNet` plus those of its `TextProj`
(`clip_embeddings_dim`, `clip_extra_context_tokens`), built by `unclip_jax.models.unet.decoder_from_config`.
`attention_levels[i]` says whether level i (64, 32, 16, 8 px for 4 levels) has attention.
Sizes:
  * demo: 32 px (the 32->64 `configs/upsampler.py:demo` follows), channels 32/64/128, 2 res blocks, attention
    at 8 px and in the middle block (32 head channels), 128-d context tokens, CLIP `configs/clip.py:demo` (64-d) conditioning.
  * karlo: 320 ch, mult 1,2,3,4, 3 res blocks, attention at 32/16/8, 64 head channels, 1536-d context
    tokens, CLIP ViT-L/14 (768-d) conditioning: 0.90B (UNet + text_proj; diffusers' meta-device count).
  * paper: GLIDE's 3.5B architecture: 512 ch, mult 1,2,3,4, 3 res blocks, attention at 32/16/8, 64 head
    channels, 2048-d context tokens, 1024-d ViT-H/16 embeddings. The paper's 3.5B counts GLIDE's own text
    transformer (ctx 256, width 2048, 24 layers, 32 heads); here captions are encoded by the CLIP text tower
    (the Karlo design), so the model built from this config is the UNet + text_proj only (≈2.2B), and
    tests/test_model_configs.py adds the text transformer's analytic count to compare with 3.5B.
`config.diffusion` is `diffusion_config("decoder", ...)` (cosine, ε, learned-range σ, hybrid loss; the demo
predicts v instead of ε).
"""

from __future__ import annotations

import ml_collections

from unclip_jax.diffusion.config import diffusion_config
from unclip_jax.models.presets import MODEL_PRESETS, model_config
from unclip_jax.train.optim import optim_config
from unclip_jax.train.run_config import data_config, stage_header, train_config

PRESETS = MODEL_PRESETS["decoder"]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "tiny"
  config = stage_header("decoder", name, PRESETS)
  config.model = model_config("decoder", name)
  config.diffusion = diffusion_config("decoder", "paper" if name == "paper" else "karlo")

  # Paper Table 3 (64px decoder): batch 2048, 800K iterations, lr 1.2e-4, beta2 0.999, eps 1e-8, EMA 0.9999.
  config.optim = optim_config(lr=1.2e-4, warmup_steps=10_000, b2=0.999, eps=1e-8, ema_decay=0.9999)
  # Classifier-free guidance dropout: CLIP image embedding → learned embedding; caption → empty caption.
  config.train = train = train_config(2048, 800_000 if name == "paper" else 1_000_000, clip_emb_drop=0.1,
                                      text_drop=0.5 if name == "paper" else 0.3, sample_every=5_000,
                                      image_embedding_noise=0.0)  # > 0: train on noised embeddings (the stage)
  config.data = data = data_config("embedded", "", image_size=config.model.image_size)

  if name == "tiny":
    data.config = "shapes32"  # the embedded 32px shapes (README); the decoder stage downsamples to 16px
    train.batch_size, train.steps = 16, 200
    config.optim.update(dict(lr=1e-3, warmup_steps=10, ema_decay=0.99))
    train.log_every, train.checkpoint_every, train.sample_every = 50, 100, 100
  elif name == "demo":
    # Its own 50,000 embedded 32 px scenes (launch/train_demo.sh: `prepare shapes --image_size 32 --train_size
    # 50000 --heldout_size 500 --unnamed 0.5 --unnamed_kinds single,count`, `embed ... --name shapes32u`): half
    # the single-object and counting scenes in random colours with colour-free captions, so the decoder sees
    # each shape in hundreds of colours, while two-object captions name theirs. It trains on the CLIP image
    # embedding plus noise of 0.3 of its norm, about the prior's error, so the prior's samples draw as well as
    # true embeddings (docs/demo.md). 7200 steps: 53-57 min on the 2-core Intel Xeon (2.1-2.3 steps/s).
    # Through the prior, one candidate, held-out (seen) single objects 0.73 (0.93), the unseen orange circle
    # 12/13; continued with DEMO_DECODER_ARGS="--config.train.steps=12000" (38 min) 0.67 (0.93) and 0.83
    # held-out with the packed pipeline's 8 candidates. Trained on the named-colour scenes alone ("shapes32",
    # no noise) it drew 0.93 / 0.23 at 7200 steps even from the true image embedding (`evaluate --suite
    # stages`), and 1.00 / 0.57 when continued to 21,600 steps.
    data.config = "shapes32u"
    train.image_embedding_noise = 0.3
    train.batch_size, train.steps = 16, 7200
    train.text_drop = 0.2
    config.diffusion.sample.guidance_scale = 3.0  # the training grids' guidance (Karlo's 8 overshoots small models)
    # v-prediction (Salimans & Ho): near t = T an ε-model's x0 = (x_t − sqrt(1−ᾱ)·ε̂)/sqrt(ᾱ) is noise
    # amplified ~1e4×, so the first sampling steps set each image's mean colour at random, and this small,
    # briefly trained UNet then reads that offset from x_t and keeps it (tinted backgrounds: measured
    # -0.25 against the data's -0.84 at 1000 steps, while its one-step x0 on noised data was right for
    # t <= 700). A v-model predicts about −x0 there, so the mean colour comes from the conditioning.
    config.diffusion.prediction = "v"
    config.optim.update(dict(lr=5e-4, warmup_steps=100, ema_decay=0.995))
    train.log_every, train.checkpoint_every, train.sample_every = 25, 250, 1000
  return config
