"""TFDS builders that write `array_record` files, so preparing and reading data needs no TensorFlow.

Images are stored as encoded PNG bytes (TFDS would otherwise call `tf.image.encode_png`), read back
through `tfds.data_source` / `builder.as_data_source`, which decode to uint8 arrays with PIL.
Each example carries its caption and a JSON `spec` with everything machine-checkable about it.

Builders: `shapes` (procedural), `emoji` (four npm icon sets), `fashion_mnist` (Debian package),
`image_text` (the user's own captioned images). Whatever a builder reads from outside is named in its
config's `source`; dataset-level facts (licences, skip counts) go to `info.metadata` (metadata.json).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tqdm.auto import tqdm

from unclip_jax.data import emoji as emoji_lib
from unclip_jax.data import image_files
from unclip_jax.data import shapes as shapes_lib
from unclip_jax.errors import UserError
from unclip_jax.images import decode_image, png_bytes

FILE_FORMAT = "array_record"


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  train_size: int = 50_000
  heldout_size: int = 2_000
  seed: int = 0
  kinds: tuple[str, ...] = shapes_lib.KINDS  # shapes_lib.ALL_KINDS adds "a red circle and no squares"
  unnamed: float = 0.0  # share of train scenes in random colours with colour-free captions (shapes_lib)
  unnamed_kinds: tuple[str, ...] | None = None  # the kinds that share applies to (None: every kind)


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
      ShapesConfig(name="64_negation", description="64x64 scenes, also negated captions", image_size=64,
                   kinds=shapes_lib.ALL_KINDS),
      ShapesConfig(name="32_negation", description="32x32 scenes, also negated captions", image_size=32,
                   kinds=shapes_lib.ALL_KINDS),
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
    scenes = shapes_lib.ShapesScenes(image_size=c.image_size, split=split, seed=c.seed, kinds=c.kinds,
                                     unnamed=c.unnamed if split == "train" else 0.0, unnamed_kinds=c.unnamed_kinds)
    for i in range(count):
      image, caption, spec = scenes[i]
      yield f"{split}_{i}", {"image": png_bytes(image), "caption": caption, "spec": json.dumps(spec)}


def _features(size: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8, encoding_format="png"),
      "caption": tfds.features.Text(),
      "spec": tfds.features.Text(),
  })


def _dataset_info(builder, *, homepage: str, license: str) -> tfds.core.DatasetInfo:
  """DatasetInfo of our captioned-image builders: the class docstring, `_features` at the config's size."""
  return tfds.core.DatasetInfo(builder=builder, description=builder.__doc__,
                               features=_features(builder.builder_config.image_size), homepage=homepage,
                               license=license, metadata=tfds.core.MetadataDict())


# --------------------------------------------------------------------------------------------- emoji

EMOJI_LICENSES = {"fluent": "MIT", "noto": "Apache-2.0", "twemoji": "CC-BY-4.0", "openmoji": "CC-BY-SA-4.0"}


class _SourceMixin:
  """`source=` at construction: where the raw files are is not part of a config's identity (or name)."""

  def __init__(self, *, source: str | Path | None = None, **kwargs):
    self.raw_source = source
    super().__init__(**kwargs)


@dataclasses.dataclass
class EmojiConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  heldout_fraction: float = 0.05
  max_concepts: int | None = None  # a sorted prefix of the common concepts (small test sets)
  background: tuple[int, int, int] = (255, 255, 255)


class Emoji(_SourceMixin, tfds.core.GeneratorBasedBuilder):
  """Emoji concepts drawn in four aligned styles (fluent, noto, twemoji, openmoji): splits `train`, `heldout`.

  Only concepts that all four `@iconify-json` icon sets share are used. Caption: "a {style} emoji of
  {name}" ("an openmoji ..."). About 5% of the (style, concept) pairs, chosen by a hash, form `heldout` and never appear in
  `train` (every concept keeps at least one style in `train`), for compositional tests.
  Licences differ per style: fluent MIT (Microsoft), noto Apache-2.0 (Google), twemoji CC-BY-4.0
  (Twitter), openmoji CC-BY-SA-4.0 (OpenMoji); each example's spec and metadata.json name them.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      EmojiConfig(name="64", description="64x64 emoji", image_size=64),
      EmojiConfig(name="32", description="32x32 emoji", image_size=32),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    licenses = ", ".join(f"{style} {spdx}" for style, spdx in EMOJI_LICENSES.items())
    return _dataset_info(self, homepage="https://github.com/iconify/icon-sets",
                         license=f"Per style: {licenses} (see metadata.json and each example's spec).")

  def _split_generators(self, dl_manager):
    del dl_manager  # read from the npm install named by the config, never downloaded
    c = self.builder_config
    icon_sets = emoji_lib.load_styles(self.raw_source or emoji_lib.DEFAULT_SOURCE)  # fails before anything is written
    concepts = emoji_lib.common_concepts(icon_sets)
    if c.max_concepts is not None:
      concepts = concepts[:c.max_concepts]
    heldout = emoji_lib.heldout_pairs(concepts, c.heldout_fraction)
    self.info.metadata.update({
        "licenses": {s.style.name: s.license for s in icon_sets},
        "styles": [s.style.name for s in icon_sets],
        "num_concepts": len(concepts),
        "num_heldout_pairs": len(heldout),
        "heldout_fraction": c.heldout_fraction,
        "image_size": c.image_size,
        "background": list(c.background),
        "npm_install": emoji_lib.NPM_INSTALL,
    })
    splits = {"train": self._generate_examples(icon_sets, concepts, heldout, False)}
    if heldout:  # tfds cannot write an empty split
      splits["heldout"] = self._generate_examples(icon_sets, concepts, heldout, True)
    return splits

  def _generate_examples(self, icon_sets, concepts, heldout, want_heldout: bool):
    c = self.builder_config
    for icon_set in icon_sets:
      style = icon_set.style
      for concept in concepts:
        if ((style.name, concept) in heldout) != want_heldout:
          continue
        image = emoji_lib.render(icon_set.icons[concept], c.image_size, tuple(c.background))
        spec = {"style": style.name, "concept": concept, "name": emoji_lib.concept_text(concept),
                "heldout": want_heldout, "package": style.package, "version": icon_set.license["version"],
                "license": icon_set.license["spdx"], "author": icon_set.license["author"]}
        yield f"{style.name}/{concept}", {"image": png_bytes(image), "caption": emoji_lib.caption(style, concept),
                                          "spec": json.dumps(spec)}


# ------------------------------------------------------------------------------------- fashion_mnist

FASHION_MNIST_SOURCE = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT = "apt-get install -y --no-install-recommends dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
FASHION_MNIST_TEMPLATES = ("a photo of a {}", "a {}", "a picture of a {}", "a grayscale photo of a {}",
                           "a black and white photo of a {}", "a low resolution photo of a {}",
                           "a product photo of a {}", "a small photo of a {}")
_FASHION_FILES = {"train": "train", "test": "t10k"}


def fashion_mnist_arrays(source: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28], labels uint8 [N]) from the idx files; a `UserError` if absent or damaged."""
  prefix = Path(source) / _FASHION_FILES[split]
  paths = [Path(f"{prefix}-images-idx3-ubyte.gz"), Path(f"{prefix}-labels-idx1-ubyte.gz")]
  for path in paths:
    if not path.is_file():
      raise UserError(f"Fashion-MNIST file {path} not found; install Debian's dataset-fashion-mnist "
                      f"(`{FASHION_MNIST_APT}`) or pass --source DIR with the four idx .gz files")
  try:
    raw_images, raw_labels = (gzip.open(p).read() for p in paths)
  except (OSError, EOFError) as e:
    raise UserError(f"cannot read Fashion-MNIST files under {source}: {e}; reinstall dataset-fashion-mnist")
  n = int.from_bytes(raw_images[4:8], "big")
  if (int.from_bytes(raw_images[:4], "big") != 2051 or int.from_bytes(raw_labels[:4], "big") != 2049
      or raw_images[8:16] != (28).to_bytes(4, "big") * 2 or len(raw_images) != 16 + n * 784
      or int.from_bytes(raw_labels[4:8], "big") != n or len(raw_labels) != 8 + n):
    raise UserError(f"{paths[0]} / {paths[1]} are not matching idx image/label files; reinstall dataset-fashion-mnist")
  images = np.frombuffer(raw_images, np.uint8, offset=16).reshape(n, 28, 28)
  labels = np.frombuffer(raw_labels, np.uint8, offset=8)
  if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
    raise UserError(f"{paths[1]} has labels outside 0..9; reinstall dataset-fashion-mnist")
  return images, labels


def fashion_mnist_template(split: str, index: int) -> int:
  """The caption template of one example: fixed per (split, index), spread evenly over templates."""
  digest = hashlib.sha256(f"fashion_mnist/{split}/{index}".encode()).digest()
  return int.from_bytes(digest[:4], "big") % len(FASHION_MNIST_TEMPLATES)


@dataclasses.dataclass
class FashionMnistConfig(tfds.core.BuilderConfig):
  image_size: int = 28  # 28 keeps the original pixels; 32 resizes bicubically
  max_examples: int | None = None  # the first N of each split (small test sets)


# skip_registration: tfds ships its own (downloading) `fashion_mnist`; ours is built only by name here.
class FashionMnist(_SourceMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Fashion-MNIST (Zalando, MIT) from Debian's dataset-fashion-mnist, as RGB with templated captions.

  Splits `train` (60,000) and `test` (10,000). The caption fills one of a few templates ("a photo of
  a {class}", ...) with the class name; the template is fixed per example by a hash of its index, and
  the spec holds the integer label and class name.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      FashionMnistConfig(name="28", description="28x28, original pixels", image_size=28),
      FashionMnistConfig(name="32", description="resized to 32x32", image_size=32),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return _dataset_info(self, homepage="https://github.com/zalandoresearch/fashion-mnist",
                         license="MIT (Copyright (c) 2017 Zalando SE); Debian package dataset-fashion-mnist.")

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    source = self.raw_source or FASHION_MNIST_SOURCE
    arrays = {split: fashion_mnist_arrays(source, split) for split in _FASHION_FILES}  # fail before writing
    self.info.metadata.update({"classes": list(FASHION_MNIST_CLASSES), "templates": list(FASHION_MNIST_TEMPLATES),
                               "source": str(source), "image_size": c.image_size, "license": "MIT",
                               "apt_install": FASHION_MNIST_APT})
    return {split: self._generate_examples(split, *arrays[split]) for split in _FASHION_FILES}

  def _generate_examples(self, split: str, images: np.ndarray, labels: np.ndarray):
    c = self.builder_config
    count = len(images) if c.max_examples is None else min(c.max_examples, len(images))
    for i in range(count):
      label = int(labels[i])
      template = fashion_mnist_template(split, i)
      image = Image.fromarray(images[i]).convert("RGB")
      if c.image_size != 28:
        image = image.resize((c.image_size, c.image_size), Image.BICUBIC)
      spec = {"label": label, "class": FASHION_MNIST_CLASSES[label], "template": template, "index": i}
      yield f"{split}_{i}", {"image": png_bytes(np.asarray(image)),
                             "caption": FASHION_MNIST_TEMPLATES[template].format(FASHION_MNIST_CLASSES[label]),
                             "spec": json.dumps(spec)}


# ---------------------------------------------------------------------------------------- image_text


@dataclasses.dataclass
class ImageTextConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  validation_fraction: float = 0.05


class ImageText(_SourceMixin, tfds.core.GeneratorBasedBuilder):
  """The user's own captioned images: splits `train` and `validation` (by a hash of each example's key).

  Images are converted to RGB (transparency over white), resized so the shorter side is `image_size`,
  and centre-cropped. Unreadable images and images without a caption are skipped; metadata.json holds
  the counts by reason (`skipped`).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=_features(self.builder_config.image_size),
        license="As given by the owner of the source images (not known to unclip_jax).",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    kind, paths = image_files.resolve_source(str(self.raw_source or ""))
    sizes = collections.Counter()  # a listing pass: tfds cannot write an empty split, so leave those out
    listing = image_files.iter_raw(kind, paths, collections.Counter(), with_data=False)
    for key, _, _ in tqdm(listing, desc=f"listing {self.raw_source}", unit=" pairs", leave=False):
      sizes[self._split_of(key)] += 1
    if not sizes["train"]:
      raise UserError(f"no usable image+caption pairs for the train split in {self.raw_source} "
                      f"({sizes['validation']} in validation); each image needs a same-stem .txt caption")
    self._skipped = {split: collections.Counter() for split in sizes}
    self.info.metadata.update({"source": str(self.raw_source), "source_kind": kind, "num_shards": len(paths),
                               "image_size": c.image_size, "validation_fraction": c.validation_fraction})
    return {split: self._generate_examples(split, kind, paths) for split in ("train", "validation") if sizes[split]}

  def _split_of(self, key: str) -> str:
    return "validation" if image_files.split_fraction(key) < self.builder_config.validation_fraction else "train"

  def _generate_examples(self, split: str, kind: str, paths):
    c = self.builder_config
    counts = collections.Counter()
    seen = collections.Counter()  # source-level skips (no caption, ...): the same in every pass
    for key, data, caption in image_files.iter_raw(kind, paths, seen):
      if self._split_of(key) != split:
        continue
      image = decode_image(data, c.image_size)  # None when PIL cannot decode it
      if image is None:
        counts[image_files.SKIP_UNREADABLE] += 1
        continue
      counts["examples"] += 1
      yield key, {"image": png_bytes(image), "caption": caption,
                  "spec": json.dumps({"key": key, "source": kind})}
    if split == "train":  # count source-level skips once
      counts.update(seen)
    self._skipped[split] = counts
    self._record_skips()
    if not counts["examples"]:
      raise UserError(f"every image of the {split} split in {self.raw_source} was unreadable "
                      f"({counts[image_files.SKIP_UNREADABLE]} files); check the files or the --source")

  def _record_skips(self):
    total = collections.Counter()
    for counts in self._skipped.values():
      total.update(counts)
    examples = total.pop("examples", 0)
    self.info.metadata["skipped"] = dict(sorted(total.items()))
    self.info.metadata["num_skipped"] = sum(total.values())
    self.info.metadata["num_examples"] = examples
