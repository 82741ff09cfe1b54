"""Emoji from the four npm icon sets: shared concepts, caption format, held-out pairs, licences."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from unclip_jax.data import pipeline, prepare
from unclip_jax.errors import UserError, run_cli

from unclip_jax.data import emoji


def _absent(reason: str):
  """Skip on a developer machine without the data; fail in CI, which installs it (.ci/run)."""
  if os.environ.get("UNCLIP_JAX_REQUIRE_DATA"):
    pytest.fail(reason, pytrace=False)
  pytest.skip(reason, allow_module_level=True)


SOURCE = prepare.default_emoji_source()
if any(emoji.package_dir(SOURCE, style) is None for style in emoji.STYLES):
  _absent(f"emoji npm packages not installed under {SOURCE}; install them with "
          f"`{emoji.NPM_INSTALL.replace('DIR', SOURCE)}` or set {emoji.SOURCE_ENV}")
try:
  import cairosvg  # noqa: F401
except (ImportError, OSError) as e:  # OSError: libcairo2 missing
  _absent(f"cairosvg unusable ({e}); `pip install cairosvg` and `apt-get install libcairo2`")

N_CONCEPTS = 24
FRACTION = 0.2  # larger than the default 5% so a small subset still has held-out pairs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  builder = prepare.prepare_emoji(str(root), SOURCE, image_size=32, max_concepts=N_CONCEPTS,
                                  heldout_fraction=FRACTION)
  splits = {}
  for split in ("train", "heldout"):
    source = pipeline.open_source(root, "emoji", split, builder.builder_config.name)
    splits[split] = [source[i] for i in range(len(source))]
  return builder, splits


def _pairs(examples):
  return {(s["style"], s["concept"]) for s in (json.loads(e["spec"]) for e in examples)}


def test_all_four_styles_share_the_concepts():
  icon_sets = emoji.load_styles(SOURCE)
  concepts = emoji.common_concepts(icon_sets)
  assert [s.style.name for s in icon_sets] == ["fluent", "noto", "twemoji", "openmoji"]
  assert {"cat-face", "red-apple", "alarm-clock"} <= set(concepts)
  if all(s.license["version"] == s.style.version for s in icon_sets):  # the pinned versions
    assert len(concepts) == 1567
  assert all(c in s.icons for s in icon_sets for c in concepts)
  assert emoji.caption(emoji.STYLES[1], "cat-face") == "a noto emoji of cat face"
  assert emoji.caption(emoji.STYLES[3], "red-apple") == "an openmoji emoji of red apple"


def test_alias_transformations_are_applied():
  fluent = emoji.load_icon_set(SOURCE, emoji.STYLES[0])
  right = emoji.render(fluent.icons["backhand-index-pointing-right"], 32)  # an alias: left, mirrored
  left = emoji.render(fluent.icons["backhand-index-pointing-left"], 32)
  assert np.abs(right.astype(int) - left[:, ::-1].astype(int)).mean() < 2.0
  assert np.abs(right.astype(int) - left.astype(int)).mean() > 10.0


def test_captions_images_and_split(prepared):
  builder, splits = prepared
  train, heldout = splits["train"], splits["heldout"]
  assert len(train) + len(heldout) == 4 * N_CONCEPTS and heldout
  train_pairs, heldout_pairs = _pairs(train), _pairs(heldout)
  assert not train_pairs & heldout_pairs
  concepts = emoji.common_concepts(emoji.load_styles(SOURCE))[:N_CONCEPTS]
  assert heldout_pairs == emoji.heldout_pairs(concepts, FRACTION)
  assert {c for _, c in train_pairs} == set(concepts)  # every concept is learnable in some style
  for example in train + heldout:
    caption, spec = example["caption"].decode(), json.loads(example["spec"])
    assert re.fullmatch(r"(a (fluent|noto|twemoji)|an openmoji) emoji of [a-z0-9 ]+", caption), caption
    assert caption.split(" ", 1)[1] == f"{spec['style']} emoji of {spec['concept'].replace('-', ' ')}"
    image = example["image"]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image.min() < 200 and image.std() > 10  # something was drawn
  corners = np.stack([e["image"][[0, 0, -1, -1], [0, -1, 0, -1]] for e in train + heldout])
  assert (corners == 255).all(axis=-1).mean() > 0.7  # drawn on the white background (a few fill the square)


def test_licences_are_recorded(prepared):
  builder, splits = prepared
  from unclip_jax.data import builders

  import tensorflow_datasets as tfds

  # read back from disk: the metadata must survive it
  info = tfds.builder_from_directory(str(builder.data_path)).info
  licences = {style: rec["spdx"] for style, rec in info.metadata["licenses"].items()}
  assert licences == builders.EMOJI_LICENSES == {"fluent": "MIT", "noto": "Apache-2.0", "twemoji": "CC-BY-4.0",
                                                 "openmoji": "CC-BY-SA-4.0"}
  records = info.metadata["licenses"].values()
  assert all(rec["package"].startswith("@iconify-json/") and rec["version"] and rec["author"] for rec in records)
  assert info.metadata["num_concepts"] == N_CONCEPTS
  assert "CC-BY-SA-4.0" in info.as_proto.redistribution_info.license
  for example in splits["train"][:8]:
    spec = json.loads(example["spec"])
    assert spec["license"] == builders.EMOJI_LICENSES[spec["style"]]


def test_bad_input(tmp_path, capsys):
  with pytest.raises(UserError, match="not found under .*npm install --prefix"):
    prepare.prepare_emoji(str(tmp_path / "data"), str(tmp_path / "nothing"), max_concepts=2)
  with pytest.raises(SystemExit) as e:
    run_cli(prepare.main, ["emoji", "--data_dir", str(tmp_path), "--image_size", "4"])
  assert e.value.code == 2 and "--image_size must be between 8 and 512" in capsys.readouterr().err
  assert not (tmp_path / "emoji").exists()


def test_cli_default_size(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    run_cli(prepare.main, ["emoji", "--data_dir", str(tmp_path), "--source", SOURCE, "--max_concepts", "3"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and "licences: fluent: MIT" in out and "openmoji: CC-BY-SA-4.0" in out
  source = pipeline.open_source(tmp_path, "emoji", "train", "64_c3_h50")
  assert source[0]["image"].shape == (64, 64, 3)
