"""The evaluation context's generation: chunks of `batch` prompts, the last one padded, and a call with fewer
prompts than a batch drawn at its own (device-rounded) size, not padded to a whole batch."""

from __future__ import annotations

import numpy as np

from unclip_jax.eval.context import Context, Options
from unclip_jax.pipeline.runner import ShardedRunner


class RecordingPipe:
  """Draws each prompt's seed as a flat image and records the rows of every call."""
  n_devices = 2

  def __init__(self):
    self.calls = []

  def settings(self, overrides):
    return {}

  padded_batch = ShardedRunner.padded_batch  # the pipeline's own rule, on this pipe's device count

  def generate(self, prompts, seeds, settings, batch):
    self.calls.append((len(prompts), batch))
    return {"images": np.stack([np.full((2, 2, 3), s, np.uint8) for s in seeds])}


def _draw(n, batch):
  pipe = RecordingPipe()
  ctx = Context(pipe, Options(batch=batch, progress=False), log=lambda m: None)
  seeds = list(range(n))
  images = ctx.generate([f"p{i}" for i in seeds], seeds)
  np.testing.assert_array_equal(images[:, 0, 0, 0], seeds)  # every prompt's image, in order, padding dropped
  return pipe.calls


def test_few_prompts_are_not_padded_to_a_whole_batch():
  assert _draw(6, 32) == [(6, 6)]
  assert _draw(5, 32) == [(6, 6)]  # rounded up to the device count
  assert _draw(1, 32) == [(1, 1)]


def test_many_prompts_run_in_batches_with_the_last_padded():
  assert _draw(70, 32) == [(32, 32), (32, 32), (32, 32)]
  assert _draw(64, 32) == [(32, 32), (32, 32)]
