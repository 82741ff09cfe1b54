"""Prepared shapes data (tfds array_record, no TensorFlow) read through grain."""

import gc
import json
import sys
import time

import grain.python as grain
import numpy as np
import pytest

from unclip_jax.data import pipeline, prepare, shapes
from unclip_jax.errors import UserError, run_cli


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  builder = prepare.prepare_shapes(str(root), image_size=32, train_size=48, heldout_size=12)
  return root, builder.builder_config.name


def test_prepared_examples_equal_the_generator_and_respect_the_heldout_split(shapes_dir):
  root, config = shapes_dir
  train = pipeline.open_source(root, "shapes", "train", config)
  heldout = pipeline.open_source(root, "shapes", "heldout", config)
  assert len(train) == 48 and len(heldout) == 12
  scenes = shapes.ShapesScenes(image_size=32, split="train")
  keys_seen = set()
  for i in range(len(train)):
    ex = train[i]
    spec = json.loads(ex["spec"])
    assert not shapes.is_heldout(spec)
    keys_seen.add(ex["caption"])
  image, caption, _ = scenes[0]
  assert caption.encode() in keys_seen
  match = [i for i in range(len(train)) if train[i]["caption"] == caption.encode()
           and np.array_equal(train[i]["image"], image)]
  assert match, "the PNG round trip must be pixel exact"
  assert all(shapes.is_heldout(json.loads(heldout[i]["spec"])) for i in range(len(heldout)))
  assert "tensorflow" not in sys.modules


def test_loader_batches_are_deterministic_sharded_and_resumable(shapes_dir):
  root, config = shapes_dir
  source = pipeline.open_source(root, "shapes", "train", config)
  loader = pipeline.make_loader(source, batch_size=8, seed=3)
  it = iter(loader)
  first = next(it)
  assert first["image"].shape == (8, 32, 32, 3) and first["image"].dtype == np.float32
  assert -1.0 <= first["image"].min() and first["image"].max() <= 1.0
  state = it.get_state()
  expected = [next(it) for _ in range(7)]  # crosses an epoch boundary (48 examples)
  resumed = iter(pipeline.make_loader(source, batch_size=8, seed=3))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    assert list(got["caption"]) == list(want["caption"])
  again = next(iter(pipeline.make_loader(source, batch_size=8, seed=3)))
  np.testing.assert_array_equal(again["image"], first["image"])
  other = next(iter(pipeline.make_loader(source, batch_size=8, seed=4)))
  assert not np.array_equal(other["image"], first["image"])

  def captions(index):
    loader = pipeline.make_loader(source, batch_size=8, seed=0, shuffle=False, num_epochs=1,
                                  process_index=index, process_count=2)
    return [c for batch in loader for c in batch["spec"]]

  a, b = captions(0), captions(1)
  assert len(a) == len(b) == 24 and not set(a) & set(b)  # disjoint halves (specs are unique per example)


def test_global_batches_do_not_depend_on_the_process_count(shapes_dir):
  """Two processes' halves of each global batch, put side by side, are the one-process batch; resuming a
  process's iterator mid-epoch continues its part."""
  root, config = shapes_dir
  source = pipeline.open_source(root, "shapes", "train", config)

  def specs(count, index, batches=5):  # 5 global batches of 16 cross the 48-example epoch boundary
    it = iter(pipeline.make_loader(source, batch_size=16 // count, seed=7, process_index=index, process_count=count))
    return [list(next(it)["spec"]) for _ in range(batches)]

  one, halves = specs(1, 0), [specs(2, p) for p in range(2)]
  assert [a + b for a, b in zip(*halves)] == one
  assert len(set(one[0])) == 16 and one[0] != one[1]
  it = iter(pipeline.make_loader(source, batch_size=8, seed=7, process_index=1, process_count=2))
  next(it), next(it)
  again = iter(pipeline.make_loader(source, batch_size=8, seed=7, process_index=1, process_count=2))
  again.set_state(it.get_state())
  assert list(next(again)["spec"]) == halves[1][2]


def test_bad_input(shapes_dir, tmp_path, capsys):
  root, config = shapes_dir
  with pytest.raises(UserError, match="does not exist; prepare it with `python -m unclip_jax.data.prepare shapes"):
    pipeline.open_source(tmp_path / "missing", "shapes", "train")
  with pytest.raises(UserError, match="no prepared shapes/nope dataset"):
    pipeline.open_source(root, "shapes", "train", "nope")
  with pytest.raises(UserError, match="has no split 'validation'"):
    pipeline.open_source(root, "shapes", "validation", config)
  source = pipeline.open_source(root, "shapes", "heldout", config)
  with pytest.raises(UserError, match="too few for a batch of 64"):
    pipeline.make_loader(source, batch_size=64, seed=0)
  with pytest.raises(SystemExit) as e:
    run_cli(prepare.main, ["mnist", "--data_dir", str(tmp_path)])
  assert e.value.code == 2 and "error: unknown dataset 'mnist'" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    run_cli(prepare.main, ["shapes", "--data_dir", str(tmp_path), "--image_size", "48"])
  assert e.value.code == 2 and "--image_size must be 32 or 64" in capsys.readouterr().err


def test_default_shapes_sizes_use_the_registered_configs(tmp_path):
  from unclip_jax.data import builders

  for size in (32, 64):
    config = prepare.shapes_config(size, 50_000, 2_000)
    assert config == str(size)
    builder = builders.Shapes(config=config, data_dir=str(tmp_path), file_format=builders.FILE_FORMAT)
    assert builder.builder_config.image_size == size and builder.builder_config.train_size == 50_000
  assert prepare.shapes_config(32, 100, 10).name == "32_n100_h10_s0"
  assert prepare.shapes_config(32, 50_000, 2_000, unnamed=0.5).name == "32_n50000_h2000_s0_u50"
  # two shares never share a folder: a rounded percent would give 0.5 and 0.504 the same name
  assert prepare.shapes_config(32, 100, 10, unnamed=0.504).name == "32_n100_h10_s0_u50p4"
  assert prepare.shapes_config(32, 100, 10, unnamed=0.004).name == "32_n100_h10_s0_u0p4"
  limited = prepare.shapes_config(32, 100, 10, unnamed=0.5, unnamed_kinds="count, single")
  assert limited.name == "32_n100_h10_s0_u50_single-count" and limited.unnamed_kinds == ("single", "count")
  every = prepare.shapes_config(32, 100, 10, unnamed=0.5, unnamed_kinds="single,count,pair,relation")
  assert every.name == "32_n100_h10_s0_u50" and every.unnamed_kinds is None  # the same set, so the same folder
  with pytest.raises(UserError, match="--unnamed_kinds must name some of single, count, pair, relation"):
    prepare.shapes_config(32, 100, 10, unnamed=0.5, unnamed_kinds="single,negation")
  with pytest.raises(UserError, match="--unnamed_kinds needs --unnamed"):
    prepare.shapes_config(32, 100, 10, unnamed_kinds="single")


def test_unnamed_colours_reach_the_train_split_only(tmp_path):
  builder = prepare.prepare_shapes(str(tmp_path), 32, train_size=40, heldout_size=8, unnamed=0.5)
  config = builder.builder_config.name
  assert config == "32_n40_h8_s0_u50" and builder.builder_config.unnamed == 0.5
  train, heldout = (pipeline.open_source(tmp_path, "shapes", split, config) for split in ("train", "heldout"))
  train, heldout = ([json.loads(d[i]["spec"]) for i in range(len(d))] for d in (train, heldout))
  assert 0 < sum(s["objects"][0]["color"] is None for s in train) < len(train)
  assert all(o["color"] is not None for s in heldout for o in s["objects"])
  with pytest.raises(UserError, match="--unnamed must be a share"):
    prepare.prepare_shapes(str(tmp_path), 32, 40, 8, unnamed=1.5)


def test_prefetching_loader_gives_the_same_batches_and_states(shapes_dir):
  """The background-thread loader yields exactly the plain loader's batches, and its state after each batch
  is the plain loader's: a checkpoint taken while batches wait in the queue resumes right after the last
  batch handed out."""
  root, config = shapes_dir
  source = pipeline.open_source(root, "shapes", "train", config)
  plain_loader = pipeline.make_loader(source, batch_size=8, seed=5, prefetch=0)
  loader = pipeline.make_loader(source, batch_size=8, seed=5, prefetch=2, read_threads=2)
  assert isinstance(loader, pipeline.Prefetch) and not isinstance(plain_loader, pipeline.Prefetch)
  plain, fetched = iter(plain_loader), iter(loader)
  assert fetched.get_state() == plain.get_state()
  for _ in range(3):
    a, b = next(plain), next(fetched)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert list(a["caption"]) == list(b["caption"])
    assert fetched.get_state() == plain.get_state()
  deadline = time.monotonic() + 30
  while fetched._queue.qsize() < 2 and time.monotonic() < deadline:  # the thread reads ahead, up to 2 batches
    time.sleep(0.01)
  assert fetched._queue.qsize() == 2
  state = fetched.get_state()
  expected = [next(plain) for _ in range(4)]  # crosses the epoch boundary (48 examples)
  resumed = iter(pipeline.make_loader(source, batch_size=8, seed=5))
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["image"], want["image"])
  fetched.set_state(state)  # rewinds a running iterator: the read-ahead batches are dropped
  np.testing.assert_array_equal(next(fetched)["image"], expected[0]["image"])
  fetched.close()  # stopping the thread rewinds too: nothing is skipped
  np.testing.assert_array_equal(next(fetched)["image"], expected[1]["image"])
  fetched.close()


def test_prefetching_loader_ends_and_fails_like_its_source(shapes_dir):
  root, config = shapes_dir
  source = pipeline.open_source(root, "shapes", "heldout", config)
  one_epoch = pipeline.make_loader(source, batch_size=4, seed=0, shuffle=False, num_epochs=1, prefetch=3)
  assert len(list(one_epoch)) == 3  # 12 examples: three batches, then StopIteration from the thread
  with pytest.raises(UserError, match="prefetch and read_threads must be non-negative"):
    pipeline.make_loader(source, batch_size=4, seed=0, prefetch=-1)

  class Broken(grain.MapTransform):
    def map(self, example):
      raise ValueError("a corrupt record")

  broken = pipeline.make_loader(source, batch_size=4, seed=0, operations=[Broken()])
  with pytest.raises(ValueError, match="a corrupt record"):
    next(iter(broken))

  it = iter(pipeline.make_loader(source, batch_size=4, seed=0))
  next(it)
  thread = it._thread
  del it  # a trainer that returns drops its iterator: the thread must not outlive it
  gc.collect()
  thread.join(timeout=30)
  assert not thread.is_alive()
