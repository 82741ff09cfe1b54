"""TFDS builders that write `array_record` files, so preparing and reading data needs no TensorFlow.

Images are stored as encoded PNG bytes (TFDS would otherwise call `tf.image.encode_png`), read back
through `tfds.data_source` / `builder.as_data_source`, which decode to uint8 arrays with PIL.
Each example carries its caption and a JSON `spec` with everything machine-checkable about it.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from unclip_jax.data import shapes as shapes_lib

FILE_FORMAT = "array_record"


def png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  train_size: int = 50_000
  heldout_size: int = 2_000
  seed: int = 0


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedural captioned scenes (`unclip_jax.data.shapes`): splits `train` and `heldout`.

  The held-out split holds only (colour, shape) and (relation, shape pair) combinations that never
  appear in `train`, for compositional evaluation.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="64", description="64x64 scenes", image_size=64),
      ShapesConfig(name="32", description="32x32 scenes", image_size=32),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8, encoding_format="png"),
            "caption": tfds.features.Text(),
            "spec": tfds.features.Text(),
        }),
        license="Generated procedurally by unclip_jax; no third-party content.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: every example is a function of (seed, split, index)
    c = self.builder_config
    return {"train": self._generate_examples("train", c.train_size), "heldout": self._generate_examples(
        "heldout", c.heldout_size)}

  def _generate_examples(self, split: str, count: int):
    c = self.builder_config
    scenes = shapes_lib.ShapesScenes(image_size=c.image_size, split=split, seed=c.seed)
    for i in range(count):
      image, caption, spec = scenes[i]
      yield f"{split}_{i}", {"image": png_bytes(image), "caption": caption, "spec": json.dumps(spec)}
