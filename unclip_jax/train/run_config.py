"""The `train` and `data` sub-configs every stage config carries, with the fields the loop reads."""

from __future__ import annotations

import ml_collections


def train_config(batch_size: int, steps: int, **stage_fields) -> ml_collections.ConfigDict:
  """`config.train`: global batch, steps, logging/checkpoint cadence, plus the stage's own fields."""
  c = ml_collections.ConfigDict()
  c.batch_size = batch_size        # global: split over every device of every process
  c.steps = steps
  c.log_every = 100                # metrics.jsonl / TensorBoard rows
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.sample_every = 0               # image grids in WORKDIR/samples (stages that draw images); 0 = never
  c.num_devices = 0                # local devices to use; 0 = all
  c.shard_optimizer = False        # split Adam moments + EMA over the devices (ZeRO-2, unclip_jax.train.zero)
  for key, value in stage_fields.items():
    c[key] = value
  return c


def data_config(name: str, config: str = "", **fields) -> ml_collections.ConfigDict:
  """`config.data`: which prepared dataset (tfds `name`/`config`) under `data_dir` to read."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.config = config
  c.split = "train"
  c.data_dir = ""                  # set with --data_dir or --config.data.data_dir
  for key, value in fields.items():
    c[key] = value
  return c
