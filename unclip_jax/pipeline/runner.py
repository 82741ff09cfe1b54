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
  of the local device count; padding repeats the last row) and the first B rows are returned. A batch of
  fewer images than devices runs unpadded on that many devices: on a CPU host the virtual devices share
  the cores, so a padding row would cost as much as a real one (one image on 2 devices: 11.8 s against
  8.7 s on one, the packaged demo on the 2-core Xeon)."""

  def __init__(self, log: Callable[[str], None] = print):
    self.devices = jax.local_devices()
    self.n_devices = len(self.devices)
    self.replicated, self.batched = self._shardings(self.n_devices)
    self.log = log
    self.compiled: dict = {}
    self.timings: list[dict] = []

  def _shardings(self, rows: int) -> tuple[jax.sharding.NamedSharding, jax.sharding.NamedSharding]:
    """(replicated, batch-sharded) placements of a program of `rows` rows: every local device, or the
    first `rows` of them when there are fewer rows than devices."""
    mesh = jax.sharding.Mesh(np.array(self.devices[:min(rows, self.n_devices)]), ("data",))
    return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))

  def _onto(self, tree, replicated: jax.sharding.NamedSharding):
    """Weights put by `put` as the same arrays on the devices of `replicated`, made of the copies those
    devices already hold (nothing is transferred). Host values are left to jit to place."""
    if replicated.device_set == self.replicated.device_set:
      return tree
    devices = replicated.device_set

    def move(x):
      if isinstance(x, jax.Array) and x.sharding.is_fully_replicated and devices <= x.sharding.device_set:
        return jax.make_array_from_single_device_arrays(
            x.shape, replicated, [s.data for s in x.addressable_shards if s.device in devices])
      return x
    return jax.tree.map(move, tree)

  def put(self, tree):
    """Weights onto every local device."""
    return jax.device_put(tree, self.replicated)

  def padded_batch(self, n: int, batch: int | None = None) -> int:
    """Rows of the compiled program for n images: `batch` (or n) rounded up to the device count, or
    unpadded when it is less than the device count."""
    b = max(1, min(n, batch or n))
    return b if b < self.n_devices else -(-b // self.n_devices) * self.n_devices

  def fits(self, rows: int) -> bool:
    """Whether a program of `rows` rows can run here: fewer rows than devices, or a multiple of them."""
    return 1 <= rows and (rows <= self.n_devices or rows % self.n_devices == 0)

  def rows(self, n: int, batch: int | None, rows: int | None) -> int:
    """`rows` if given (checked against the devices and the batch), else `padded_batch`."""
    if rows is None:
      return self.padded_batch(n, batch)
    if not self.fits(rows) or rows < min(n, batch or n):
      raise UserError(f"a compiled batch of {rows} rows does not fit {self.n_devices} device(s) and "
                      f"{min(n, batch or n)} images per batch")
    return rows

  @staticmethod
  def chunks(n: int, batch: int | None) -> list[tuple[int, int]]:
    b = max(1, min(n, batch or n))
    return [(i, min(n, i + b)) for i in range(0, n, b)]

  def spreads(self, rows: int, spread: bool) -> bool:
    """Whether a program of `rows` rows that can divide its own work (`spread`) gets every device: for a
    single row. (With several rows, XLA did not divide the decoder candidates of the replicated rows: 4 rows
    of the packaged demo on 8 CPU devices ran 236 s spread against 27 s on 4 devices.)"""
    return spread and rows == 1 < self.n_devices

  def run(self, label: str, key: tuple, fn: Callable, replicated: tuple, batched: tuple, n: int, rows: int,
          spread: bool = False):
    """`fn(*replicated, *batched)` jitted with the batch axis sharded; pads to `rows`, returns n rows. Fewer
    rows than devices run on the first `rows` devices, or, with `spread` (a program that divides its own
    work over the devices, such as decoder candidates: `programs.decoder_piece`) and a single row, on every
    device with the row replicated."""
    def pad(x):
      x = np.asarray(x)
      if x.shape[0] == rows:
        return x
      return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)], axis=0)
    spread = self.spreads(rows, spread)
    on_all, split = (self.replicated, self.replicated) if spread else self._shardings(rows)
    replicated = self._onto(replicated, on_all)
    batched = tuple(jax.device_put(pad(x), split) for x in batched)
    cache_key = (label, rows, spread) + key
    compile_s = 0.0
    if cache_key not in self.compiled:
      start = time.perf_counter()
      jitted = jax.jit(fn, in_shardings=(on_all,) * len(replicated) + (split,) * len(batched), out_shardings=split)
      self.compiled[cache_key] = jitted.lower(*replicated, *batched).compile()
      compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(self.compiled[cache_key](*replicated, *batched))
    run_s = time.perf_counter() - start
    self.timings.append({"stage": label, "rows": rows, "spread": spread, "compile_s": compile_s, "run_s": run_s})
    spread_note = f" (work spread over {self.n_devices} devices)" if spread else ""
    self.log(f"  {label}: {rows} rows{spread_note}, " + (f"compile {compile_s:.2f}s, " if compile_s else "")
             + f"run {run_s:.2f}s")
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)

  def run_chunked(self, label: str, key: tuple, fn: Callable, replicated: tuple, batched: tuple, n: int,
                  batch: int | None, rows: int | None = None, spread: bool = False):
    """`run` over batches of `batch` rows, results concatenated (a tree of arrays)."""
    rows = self.rows(n, batch, rows)
    outs = [self.run(label, key, fn, replicated, tuple(x[lo:hi] for x in batched), hi - lo, rows, spread)
            for lo, hi in self.chunks(n, batch)]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
