"""Prepared shapes data for the training-loop tests."""

import pytest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """(root, config name) of a tiny prepared shapes set: 64 train and 8 held-out 32 px scenes."""
  from unclip_jax.data import prepare

  root = tmp_path_factory.mktemp("data")
  builder = prepare.prepare_shapes(str(root), image_size=32, train_size=64, heldout_size=8)
  return str(root), builder.builder_config.name
