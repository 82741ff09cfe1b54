"""The sharded runner: padding to the devices, and fewer images than devices run unpadded."""

import jax
import numpy as np

from unclip_jax.pipeline.runner import ShardedRunner


def test_rows_round_up_to_the_devices_unless_there_are_fewer_images_than_devices():
  r = ShardedRunner(log=lambda m: None)
  assert r.n_devices == 8
  assert [r.padded_batch(n) for n in (1, 3, 7, 8, 9, 17)] == [1, 3, 7, 8, 16, 24]
  assert r.padded_batch(20, batch=5) == 5 and r.padded_batch(20, batch=10) == 16
  assert [r.fits(k) for k in (0, 1, 3, 8, 12, 16)] == [False, True, True, True, False, True]


def test_fewer_images_than_devices_run_on_that_many_devices_with_the_weights_they_already_hold():
  r = ShardedRunner(log=lambda m: None)
  weights = r.put(np.arange(4.0, dtype=np.float32))
  fn = lambda w, x: x * w.sum()  # noqa: E731
  x = np.arange(11.0, dtype=np.float32)[:, None]
  few = r.run("scale", (), fn, (weights,), (x[:3],), 3, r.padded_batch(3))
  many = r.run("scale", (), fn, (weights,), (x,), 11, r.padded_batch(11))
  np.testing.assert_array_equal(few, x[:3] * 6.0)
  np.testing.assert_array_equal(many, x * 6.0)
  assert [t["rows"] for t in r.timings] == [3, 16]
  compiled = r.compiled[("scale", 3, False)]
  assert {d.id for d in compiled.input_shardings[0][1].device_set} == {d.id for d in jax.local_devices()[:3]}
  # the weights on the first 3 devices are the buffers `put` made there, not copies
  moved = r._onto(weights, r._shardings(3)[0])
  before = {s.device: s.data.unsafe_buffer_pointer() for s in weights.addressable_shards}
  assert {s.device: s.data.unsafe_buffer_pointer() for s in moved.addressable_shards} == {
      d: before[d] for d in jax.local_devices()[:3]}
