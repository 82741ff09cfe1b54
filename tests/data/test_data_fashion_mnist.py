"""Fashion-MNIST from Debian's dataset-fashion-mnist: pixels kept, captions true to the labels."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from unclip_jax.data import builders, pipeline, prepare
from unclip_jax.errors import UserError, run_cli

SOURCE = builders.FASHION_MNIST_SOURCE
if not all((Path(SOURCE) / f"{s}-{k}-ubyte.gz").is_file() for s in ("train", "t10k")
           for k in ("images-idx3", "labels-idx1")):
  reason = f"Fashion-MNIST not installed at {SOURCE}; `{builders.FASHION_MNIST_APT}` (as root)"
  if os.environ.get("UNCLIP_JAX_REQUIRE_DATA"):  # CI installs it (.ci/run): absent there is a failure
    pytest.fail(reason, pytrace=False)
  pytest.skip(reason, allow_module_level=True)
N = 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  builder = prepare.prepare_fashion_mnist(str(root), image_size=28, max_examples=N)
  return root, builder


def test_raw_files_are_the_full_dataset():
  images, labels = builders.fashion_mnist_arrays(SOURCE, "train")
  assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
  assert np.bincount(labels, minlength=10).tolist() == [6000] * 10
  test_images, test_labels = builders.fashion_mnist_arrays(SOURCE, "test")
  assert test_images.shape == (10_000, 28, 28) and len(test_labels) == 10_000


def test_pixels_labels_and_captions_agree(prepared):
  root, builder = prepared
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": N, "test": N}
  for split in ("train", "test"):
    raw_images, raw_labels = builders.fashion_mnist_arrays(SOURCE, split)
    source = pipeline.open_source(root, "fashion_mnist", split, builder.builder_config.name)
    seen_templates, seen_labels = set(), set()
    for i in range(len(source)):
      example = source[i]
      spec = json.loads(example["spec"])
      index, label = spec["index"], spec["label"]
      assert label == raw_labels[index] and spec["class"] == builders.FASHION_MNIST_CLASSES[label]
      template = builders.FASHION_MNIST_TEMPLATES[spec["template"]]
      assert example["caption"].decode() == template.format(builders.FASHION_MNIST_CLASSES[label])
      assert spec["template"] == builders.fashion_mnist_template(split, index)  # fixed per example
      image = example["image"]
      assert image.shape == (28, 28, 3) and image.dtype == np.uint8
      for channel in range(3):  # grey as RGB, original pixels
        np.testing.assert_array_equal(image[..., channel], raw_images[index])
      seen_templates.add(spec["template"])
      seen_labels.add(label)
    assert len(seen_templates) >= 4 and len(seen_labels) >= 8


def test_resized_variant_and_metadata(tmp_path):
  builder = prepare.prepare_fashion_mnist(str(tmp_path), image_size=32, max_examples=8)
  source = pipeline.open_source(tmp_path, "fashion_mnist", "test", "32_n8")
  image = source[0]["image"]
  assert image.shape == (32, 32, 3) and 0 <= image.min() and image.max() > 100
  assert (image[..., 0] == image[..., 2]).all()
  assert builder.info.metadata["license"] == "MIT" and len(builder.info.metadata["classes"]) == 10


def test_missing_files_name_the_apt_package(tmp_path, capsys):
  with pytest.raises(UserError, match="install Debian's dataset-fashion-mnist \\(`apt-get install"):
    prepare.prepare_fashion_mnist(str(tmp_path / "d"), source=str(tmp_path))
  (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
  (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
  with pytest.raises(UserError, match="reinstall dataset-fashion-mnist"):
    builders.fashion_mnist_arrays(tmp_path, "test")
  with pytest.raises(SystemExit) as e:
    run_cli(prepare.main, ["fashion_mnist", "--data_dir", str(tmp_path / "d"), "--image_size", "64"])
  assert e.value.code == 2 and "--image_size must be 28 or 32" in capsys.readouterr().err
  assert not (tmp_path / "d").exists()
