"""Runs traced functions over the local devices: the batch axis sharded, weights replicated, each
(program, batch rows, baked settings) compiled once and cached, with compile and run times recorded."""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from unclip_jax.errors import UserError


class ShardedRunner:
  """Host arrays in, host arrays out. Any batch size B is padded to a compiled number of rows (a multiple
  of the local device count; padding repeats the last row) and the first B rows are returned."""

  def __init__(self, log: Callable[[str], None] = print):
    devices = jax.local_devices()
    self.mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self.n_devices = len(devices)
    self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.batched = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
    self.log = log
    self.compiled: dict = {}
    self.timings: list[dict] = []

  def put(self, tree):
    """Weights onto every local device."""
    return jax.device_put(tree, self.replicated)

  def padded_batch(self, n: int, batch: int | None = None) -> int:
    """Rows of the compiled program for n images: `batch` (or n) rounded up to the device count."""
    b = max(1, min(n, batch or n))
    return -(-b // self.n_devices) * self.n_devices

  def rows(self, n: int, batch: int | None, rows: int | None) -> int:
    """`rows` if given (checked against the devices and the batch), else `padded_batch`."""
    if rows is None:
      return self.padded_batch(n, batch)
    if rows % self.n_devices or rows < min(n, batch or n):
      raise UserError(f"a compiled batch of {rows} rows does not fit {self.n_devices} device(s) and "
                      f"{min(n, batch or n)} images per batch")
    return rows

  @staticmethod
  def chunks(n: int, batch: int | None) -> list[tuple[int, int]]:
    b = max(1, min(n, batch or n))
    return [(i, min(n, i + b)) for i in range(0, n, b)]

  def run(self, label: str, key: tuple, fn: Callable, replicated: tuple, batched: tuple, n: int, rows: int):
    """`fn(*replicated, *batched)` jitted with the batch axis sharded; pads to `rows`, returns n rows."""
    def pad(x):
      x = np.asarray(x)
      if x.shape[0] == rows:
        return x
      return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)], axis=0)
    batched = tuple(jax.device_put(pad(x), self.batched) for x in batched)
    cache_key = (label, rows) + key
    compile_s = 0.0
    if cache_key not in self.compiled:
      start = time.perf_counter()
      jitted = jax.jit(fn, in_shardings=(self.replicated,) * len(replicated) + (self.batched,) * len(batched),
                       out_shardings=self.batched)
      self.compiled[cache_key] = jitted.lower(*replicated, *batched).compile()
      compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(self.compiled[cache_key](*replicated, *batched))
    run_s = time.perf_counter() - start
    self.timings.append({"stage": label, "rows": rows, "compile_s": compile_s, "run_s": run_s})
    self.log(f"  {label}: {rows} rows, " + (f"compile {compile_s:.2f}s, " if compile_s else "") + f"run {run_s:.2f}s")
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)

  def run_chunked(self, label: str, key: tuple, fn: Callable, replicated: tuple, batched: tuple, n: int,
                  batch: int | None, rows: int | None = None):
    """`run` over batches of `batch` rows, results concatenated (a tree of arrays)."""
    rows = self.rows(n, batch, rows)
    outs = [self.run(label, key, fn, replicated, tuple(x[lo:hi] for x in batched), hi - lo, rows)
            for lo, hi in self.chunks(n, batch)]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
