"""The zeroshot suite probes a CLIP on scenes rendered at its own input size, and reports 64 px renders
resized down to it separately."""

from __future__ import annotations

import types

import numpy as np

from unclip_jax.eval import prompts, zeroshot_probe


class _Scorer:
  """Records the image sizes it is shown; predicts class 0 for everything."""

  def __init__(self, size):
    self.config = types.SimpleNamespace(image_size=size)
    self.sizes = []

  def zero_shot(self, images, labels, templates):
    self.sizes.append(images.shape[1:3])
    return np.zeros(len(images), int)


def test_probes_render_at_the_clip_size_and_report_the_resized_renders_apart():
  scorer = _Scorer(32)
  ctx = types.SimpleNamespace(generator_clip=scorer, log=print,
                              options=types.SimpleNamespace(num=4, seed=0, zeroshot_extra=False))
  out = zeroshot_probe.run(ctx)
  assert out["image_size"] == 32 and set(scorer.sizes) == {(32, 32), (prompts.IMAGE_SIZE, prompts.IMAGE_SIZE)}
  for key in ("shapes", "shapes_resized_from_64px"):
    assert out[key]["heldout"]["shape"]["n"] == 4
  native = prompts.task_set("single", "heldout", 4, 77, 32)
  big = prompts.task_set("single", "heldout", 4, 77)
  assert native[0] == big[0] and native[1].shape[1:3] == (32, 32) and big[1].shape[1:3] == (64, 64)

  scorer64 = _Scorer(prompts.IMAGE_SIZE)  # a 64 px CLIP: one probe, no resized copy
  out = zeroshot_probe.run(types.SimpleNamespace(generator_clip=scorer64, log=print, options=ctx.options))
  assert "shapes_resized_from_64px" not in out and set(scorer64.sizes) == {(64, 64)}
