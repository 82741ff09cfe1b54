"""What every stage config shares: its header (preset, stage, seed) and the `train` and `data`
sub-configs with the fields the loop reads."""

from __future__ import annotations

import ml_collections


def stage_header(stage: str, preset: str, presets=None, what: str | None = None) -> ml_collections.ConfigDict:
  """A new stage config holding `preset`, `stage` and the run's `seed`; with `presets`, a preset not
  among them is a ValueError naming the choices."""
  if presets is not None and preset not in presets:
    raise ValueError(f"unknown {what or stage} preset {preset!r}; choose one of {', '.join(presets)}")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.stage = stage
  c.seed = 0
  return c


def train_config(batch_size: int, steps: int, **stage_fields) -> ml_collections.ConfigDict:
  """`config.train`: global batch, steps, logging/checkpoint cadence, plus the stage's own fields."""
  c = ml_collections.ConfigDict()
  c.batch_size = batch_size        # global: split over every device of every process
  c.steps = steps
  c.log_every = 100                # metrics.jsonl / TensorBoard rows
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.max_seconds = 0.0              # wall time of one invocation: then save and stop (resume: same command); 0 = none
  c.sample_every = 0               # image grids in WORKDIR/samples (stages that draw images); 0 = never
  c.num_devices = 0                # local devices to use; 0 = all
  c.shard_optimizer = False        # split Adam moments + EMA over the devices (ZeRO-2, unclip_jax.train.zero)
  c.peer_timeout_s = 20            # multi-process: a peer silent this long is lost (train/watchdog.py)
  c.step_timeout_s = 1800          # multi-process: no step finished this long (compiling included) = a hang
  c.init_from = ""                 # a stage checkpoint (export, packed or converted) to start from instead of random
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
