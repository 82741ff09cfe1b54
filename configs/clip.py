"""CLIP training configs: presets `tiny` (CPU tests, toy shapes data), `demo` (the shapes demo pipeline of
`launch/train_demo.sh`), `demo_rerank` (the demo's reranking-only CLIP), `vit_b32`, `vit_l14` (Karlo's CLIP).

Run:

    python -m unclip_jax.train --config configs/clip.py:tiny --workdir /tmp/clip_tiny
    python -m unclip_jax.train --config configs/clip.py:demo --workdir runs/demo/clip --data_dir runs/demo/data
    python -m unclip_jax.train --config configs/clip.py:demo_rerank --workdir runs/demo/rerank_clip \
        --data_dir runs/demo/data

`demo`: a 32 px ViT (patch 4, width 96, 3 layers) and a 4-layer, 64-wide text tower (context 16; the
shapes captions are at most 10 tokens), 64-d embeddings, trained on `prepare shapes --image_size 32`.
`demo_rerank`: the same model on 64 px scenes in 8 px patches, trained only to rate the decoder's candidates after
the upsampler (a pipeline's optional `rerank_clip` stage, with the decoder's `rate_upsampled`; docs/demo.md): no
hard negatives, 2000 steps. The pipeline's own CLIP cannot be swapped,
as the prior and decoder are conditioned on its embeddings, but the reranker is free to be whatever ranks best.

`config.model` holds exactly the fields of `unclip_jax.models.clip.CLIPConfig`, so it is what a stage
checkpoint's `stage.json` stores; `config.train` follows OpenCLIP's recipe (AdamW, cosine schedule with
warmup, wd 0.2, betas (0.9, 0.98), eps 1e-6, logit scale clamped at ln 100), with `loss` 'softmax' (CLIP)
or 'sigmoid' (SigLIP, which also needs `model.init_logit_bias`).
"""

from __future__ import annotations

import math

import ml_collections

from unclip_jax.models.presets import MODEL_PRESETS, model_config
from unclip_jax.train.optim import optim_config
from unclip_jax.train.run_config import data_config, stage_header, train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "tiny"
  config = stage_header("clip", name, MODEL_PRESETS["clip"] + ("demo_rerank",), what="CLIP")
  config.model = model_config("clip", "demo" if name == "demo_rerank" else name)

  # OpenCLIP's recipe; no EMA (neither OpenCLIP nor big_vision keeps one for CLIP).
  config.optim = optim_config(lr=5e-4, warmup_steps=10_000, weight_decay=0.2, b2=0.98, eps=1e-6, ema_decay=0.0)
  # loss: 'softmax' (CLIP InfoNCE) | 'sigmoid' (SigLIP; needs model.init_logit_bias)
  # hard_negatives: '' | comma-separated kinds of `unclip_jax.data.hard_negatives` (relation, color, count):
  # NegCLIP's word-order negatives, so that the embeddings keep relations, colour binding and counts.
  # image_hard_negatives (needs 'relation' above): a flipped relation's picture, the image mirrored across the
  # relation's axis, as a wrong image for the caption, so that the image tower has to encode placement.
  # near_misses (shapes data only): '' | comma-separated kinds of `unclip_jax.data.near_misses` (color, shape,
  # count, place): each scene drawn again with one thing wrong, which its caption must score below the scene
  # (tried for demo_rerank, 2026-12-06: no better at ranking the decoder's drawings; docs/demo.md).
  config.train = train = train_config(32768, 100_000, loss="softmax", max_logit_scale=math.log(100.0),
                                      hard_negatives="", image_hard_negatives=False, near_misses="")
  # The user's own image + caption folders or webdataset shards (`prepare image_text --name ...`).
  config.data = data = data_config("image_text", "", image_size=config.model.image_size)

  if name == "tiny":
    data.name, data.config = "shapes", "32"  # `prepare shapes --image_size 32`: 32x32 captioned scenes
    train.batch_size = 64
    train.steps = 300
    config.optim.update(dict(lr=3e-3, warmup_steps=20, weight_decay=0.0))
    train.log_every = 50
    train.checkpoint_every = 100
  elif name == "demo":
    data.name, data.config = "shapes", "32"  # `prepare shapes --image_size 32`: 50,000 captioned 32x32 scenes
    train.batch_size = 128
    # 4000 steps, about 54 min on 2 cores. Relation hard negatives with their mirrored images: without them the image
    # embedding says nothing about where objects are (a linear probe reads a position scene's side at chance,
    # 0.43 / 0.53), so neither the prior nor the decoder could place anything (README, "Training").
    train.steps = 4000
    train.hard_negatives, train.image_hard_negatives = "relation", True
    config.optim.update(dict(lr=1e-3, warmup_steps=50, weight_decay=0.1))
    train.log_every = 25
    train.checkpoint_every = 100
  elif name == "demo_rerank":
    # It rates the pipeline's 64 px output images (`rate_upsampled`), so it sees 64 px scenes (`prepare shapes
    # --image_size 64`, the upsampler's data), cut into 8 px patches: as many tokens as the demo CLIP's 32 px ones.
    # Rating after the upsampler kept a right candidate more often than the 32 px reranker (docs/demo.md).
    data.name, data.config = "shapes", "64"
    config.model.image_size, config.model.patch_size = 64, 8
    data.image_size = 64
    train.batch_size = 128
    # 2000 steps, about 25 min on 2 cores. No hard negatives: such a CLIP keeps a right candidate of the demo
    # decoder more often than the demo CLIP, trained with them, does (docs/demo.md, "the reranker's seed").
    train.steps = 2000
    config.optim.update(dict(lr=2e-3, warmup_steps=100, weight_decay=0.0, end_lr_factor=0.05))
    train.log_every = 25
    train.checkpoint_every = 250
  elif name == "vit_l14":
    config.optim.update(dict(lr=4e-4, warmup_steps=2_000))
  return config
