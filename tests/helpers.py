"""What several test modules share: the tiny PyTorch peer configs (diffusers layouts of our tiny models),
the tiny CLIP training config, and the comparison of two training runs."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

# ---------------------------------------------------------------------------- tiny peer configs
# diffusers' Karlo layouts at test size: a 2-level decoder UNet (cross-attention at the second level), an
# attention-free super-resolution UNet, and a one-layer prior. Channels C; head dim 16; 8 norm groups.
C = (32, 64)
PRIOR = dict(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=24, num_embeddings=5)


def decoder_unet(sample_size: int = 16) -> dict:
  """diffusers `UNet2DConditionModel` kwargs of a tiny Karlo-layout decoder."""
  return dict(sample_size=sample_size, layers_per_block=1,
              down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
              up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
              mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=C, in_channels=3, out_channels=6,
              cross_attention_dim=48, class_embed_type="identity", attention_head_dim=16,
              resnet_time_scale_shift="scale_shift", norm_num_groups=8)


def sr_unet(sample_size: int = 16) -> dict:
  """diffusers `UNet2DModel` kwargs of a tiny Karlo-layout super-resolution UNet."""
  return dict(sample_size=sample_size, layers_per_block=1, down_block_types=("ResnetDownsampleBlock2D",) * 2,
              up_block_types=("ResnetUpsampleBlock2D",) * 2, block_out_channels=C, in_channels=6, out_channels=3,
              add_attention=False, norm_num_groups=8)


# ------------------------------------------------------------------------------- training runs

CLIP_CONFIG = "configs/clip.py:tiny"


def tiny_clip_config(data_dir: tuple[str, str], **overrides):
  """configs/clip.py:tiny on the prepared shapes data `data_dir` = (root, config name): 6 steps of 16,
  a metrics row every step, a checkpoint every 2."""
  from unclip_jax.train import config_loader

  root, name = data_dir
  config = config_loader.load_config_file(CLIP_CONFIG)
  settings = {"data.data_dir": root, "data.config": name, "train.steps": 6, "train.batch_size": 16,
              "train.log_every": 1, "train.checkpoint_every": 2, **overrides}
  return config_loader.apply_overrides(config, [f"{k}={v}" for k, v in settings.items()])


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def losses(workdir: str | Path) -> list[float]:
  from unclip_jax.train.metrics import read_metrics

  return [r["loss"] for r in read_metrics(workdir)]


def assert_same_run(workdir_a, tree_a, workdir_b, tree_b, *, loss_rtol: float = 0.0, rtol: float = 0.0,
                    atol: float = 0.0) -> list[float]:
  """Two training runs agree: their logged loss curves (same length, within `loss_rtol`; 0 = identical)
  and every leaf of the two trees (within rtol/atol; 0 = bitwise). Returns run A's losses."""
  a, b = losses(workdir_a), losses(workdir_b)
  assert len(a) == len(b) and a, (a, b)
  if loss_rtol:
    np.testing.assert_allclose(a, b, rtol=loss_rtol)
  else:
    assert a == b
  for x, y in zip(leaves(tree_a), leaves(tree_b), strict=True):
    if rtol or atol:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    else:
      np.testing.assert_array_equal(x, y)
  return a


def drawn_noise(keys, stream: int, steps: int, shape):
  """The noise a pipeline stage drew for each image key (`stream` folded in, as the programs do), to feed
  a PyTorch peer the same draws: (x_T (B, ...), [per-step noise (B, ...)], noisiest step first)."""
  from unclip_jax import diffusion as D

  x_T, per_step = [], []
  for k in keys:
    init_key, step_keys = D.sampling_keys(jax.random.fold_in(k, stream), steps)
    x_T.append(np.asarray(jax.random.normal(init_key, (1,) + tuple(shape)))[0])
    per_step.append([np.asarray(jax.random.normal(s, (1,) + tuple(shape)))[0] for s in step_keys])
  return np.stack(x_T), [np.stack([p[j] for p in per_step]) for j in range(steps)]
