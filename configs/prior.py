"""Diffusion prior configs: presets `tiny` (CPU tests), `demo` (the shapes demo pipeline of
`launch/train_demo.sh`), `karlo` (Kakao Brain's released 1B prior), `paper`.

Run:

    python -m unclip_jax.train --config configs/prior.py:tiny --workdir /tmp/prior_tiny
    python -m unclip_jax.train --config configs/prior.py:demo --workdir runs/demo/prior --data_dir runs/demo/data

`config.model` (`unclip_jax.models.presets`) holds exactly the fields of `unclip_jax.models.prior.PriorTransformer` (diffusers'
`PriorTransformer` names), so a stage checkpoint's `stage.json` can rebuild the model; `model.dtype` is the
compute dtype (params stay float32). Sizes:
  * karlo: width 2048 (32 heads × 64), 20 layers, 77 CLIP ViT-L/14 text tokens, 768-d embeddings (≈1.0B).
  * paper: width 2048, 24 blocks, 256 text tokens, 1024-d ViT-H/16 embeddings (Appendix C). That is 1.22B
    parameters; the paper's Table 3 rounds it to "1B".
  * demo: width 128 (4 heads × 32), 4 layers, 16 text tokens, 64-d embeddings (configs/clip.py:demo);
    v-predicting (see the preset).
The embedding standardisation (clip_mean / clip_std) is the Karlo one in both presets; see
`unclip_jax.models.prior`. `config.diffusion` is `unclip_jax.diffusion.config.diffusion_config("prior", ...)`.
"""

from __future__ import annotations

import ml_collections

from unclip_jax.diffusion.config import diffusion_config
from unclip_jax.models.presets import MODEL_PRESETS, model_config
from unclip_jax.train.optim import optim_config
from unclip_jax.train.run_config import data_config, stage_header, train_config

PRESETS = MODEL_PRESETS["prior"]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "tiny"
  config = stage_header("prior", name, PRESETS)
  config.model = model_config("prior", name)
  config.diffusion = diffusion_config("prior", "paper" if name == "paper" else "karlo")

  # Paper Table 3 (diffusion prior): batch 4096, 600K iterations, lr 1.1e-4, wd 6e-2, beta2 0.96, eps 1e-6, EMA 0.9999.
  config.optim = optim_config(lr=1.1e-4, warmup_steps=10_000, weight_decay=6.0e-2, b2=0.96, eps=1e-6,
                              ema_decay=0.9999)
  # text_drop: classifier-free guidance, the caption replaced by the empty caption's encoding.
  config.train = train = train_config(4096, 600_000 if name == "paper" else 1_000_000,
                                      text_drop=0.1 if name == "paper" else 0.2)
  # The derived dataset `python -m unclip_jax.embed --name NAME` writes (tokens, text and image embeddings).
  config.data = data = data_config("embedded", "")

  if name == "tiny":
    data.config = "shapes32"  # `python -m unclip_jax.embed ... --dataset shapes --dataset_config 32 --name shapes32`
    train.batch_size, train.steps = 32, 200
    config.optim.update(dict(lr=1e-3, warmup_steps=10, ema_decay=0.99))
    train.log_every, train.checkpoint_every = 50, 100
  elif name == "demo":
    data.config = "shapes32"  # `python -m unclip_jax.embed ... --dataset shapes --dataset_config 32 --name shapes32`
    # 8000 steps (16 min here, beside an evaluation): at 2000 the prior sat +0.088 / +0.070 (seen / held-out)
    # above the caption's text embedding in cosine with the image embedding, at 8000 +0.103 / +0.092, and its
    # samples' spread went 0.944 -> 0.967 (two real renders: 0.91).
    train.batch_size, train.steps = 64, 8000
    # v-prediction, not the paper's x0: this small x0 prior's samples of one caption are all but one point
    # (spread 1.000, against 0.91 between two real renders: its x0 does not give x_t back at low noise), and
    # with the 2026-12-02 decoder it drew held-out colour-shape pairs right 0.37 of the time, the v-prior 0.57.
    config.diffusion.prediction = "v"
    config.optim.update(dict(lr=5e-4, warmup_steps=100, ema_decay=0.995))
    train.log_every, train.checkpoint_every = 50, 250
  return config
