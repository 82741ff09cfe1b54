"""Reading prepared datasets: tfds array_record sources fed through grain.

Every process walks the same shuffled global order (from the run's seed) and reads its own contiguous
part of each global batch, so the global batch at each step is the same whatever the process count
(`GlobalBatchSampler`): a 2-process run sees the examples a 1-process run does. Batches are host-local.
The grain iterator's state is a small byte string the trainer stores in its checkpoint, so a resumed run continues with exactly the
examples it would have seen.

Records are read by `read_threads` grain threads; decoding, the per-example transforms and batching run
in one background thread `prefetch` batches ahead of the consumer (`Prefetch`), so a train step never
waits for data that could have been prepared while the previous step ran. The iterator's state stays
grain's own (the state after the last batch handed out), so checkpoints are the same with or without
prefetching.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import grain.python as grain
import numpy as np

from unclip_jax.errors import UserError

PREPARE_HINT = "prepare it with `python -m unclip_jax.data.prepare {name} --data_dir {data_dir}`"


def dataset_dir(data_dir: str | Path, name: str, config: str | None = None) -> Path:
  """The newest prepared version folder of `name` (and builder `config`) under `data_dir`."""
  root = Path(data_dir)
  if not root.is_dir():
    raise UserError(f"data directory {root} does not exist; " + PREPARE_HINT.format(name=name, data_dir=root))
  base = root / name / (config or "")
  versions = sorted((p for p in base.glob("*.*.*") if (p / "dataset_info.json").is_file()),
                    key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
  if not versions:
    what = f"{name}/{config}" if config else name
    raise UserError(f"no prepared {what} dataset under {root}; " + PREPARE_HINT.format(name=name, data_dir=root))
  return versions[-1]


def open_source(data_dir: str | Path, name: str, split: str, config: str | None = None):
  """A random-access data source (`len`, `[i]` → dict of numpy values) for one split."""
  import tensorflow_datasets as tfds  # slow import, kept off the CLI start-up path

  path = dataset_dir(data_dir, name, config)
  builder = tfds.builder_from_directory(str(path))
  if split not in builder.info.splits:
    raise UserError(f"dataset {path} has no split {split!r}; it has: {', '.join(builder.info.splits)}")
  return builder.as_data_source(split=split)


class ImageCaption(grain.MapTransform):
  """uint8 HWC image → float32 in [-1, 1]; caption bytes → str; spec JSON → dict (when present)."""

  def map(self, example: dict[str, Any]) -> dict[str, Any]:
    out = {"image": np.asarray(example["image"], np.float32) / 127.5 - 1.0,
           "caption": _text(example["caption"])}
    if "spec" in example:
      out["spec"] = _text(example["spec"])
    return out


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class GlobalBatchSampler:
  """A grain sampler that cuts one global shuffled order into per-process parts of each global batch.

  grain's own sharding gives each process a contiguous slice of the records, so the examples of a global
  batch depend on the process count. Here the data loader asks for element `i * P + p` (its i-th, in
  process p of P); that is global position `(i // b) * B + p * b + i % b` of a process-agnostic
  `IndexSampler`, with b = B / P examples per process. One process (P = 1) reads that order unchanged.
  """

  def __init__(self, num_records: int, *, global_batch: int, process_index: int, process_count: int,
               shuffle: bool, seed: int, num_epochs: int | None):
    self._base = grain.IndexSampler(num_records=num_records, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                                    shard_options=grain.NoSharding())
    self._global, self._count = global_batch, process_count
    self._local = global_batch // process_count
    self.shard_options = grain.ShardOptions(process_index, process_count, drop_remainder=True)
    base = len(self._base)
    self._len = base if num_epochs is None else (base // global_batch) * global_batch  # whole global batches

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:  # grain compares it with the one in a saved iterator state
    return (f"GlobalBatchSampler(base={self._base!r}, global_batch={self._global}, "
            f"shard_options={self.shard_options!r})")

  def __getitem__(self, index: int):
    if index < 0 or index >= self._len:
      raise IndexError(f"sampler index {index} out of range [0, {self._len})")
    i, p = divmod(index, self._count)
    meta = self._base[(i // self._local) * self._global + p * self._local + i % self._local]
    return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)


def make_loader(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                process_index: int = 0, process_count: int = 1, operations=(), worker_count: int = 0,
                read_threads: int = 4, prefetch: int = 2):
  """A grain loader over this process's part of `source`, yielding batches of `batch_size` examples.

  `batch_size` is per process (the global batch divided by the process count; see `GlobalBatchSampler`).
  `operations` are
  grain transforms applied per example before batching (default: `ImageCaption`). `read_threads`
  grain threads read records; with `prefetch` > 0 the loader is a `Prefetch` that prepares that many
  batches ahead in a background thread (0: batches are made on demand, in the caller's thread).
  `worker_count` > 0 moves the transforms into grain worker processes instead.
  """
  if prefetch < 0 or read_threads < 0:
    raise UserError(f"prefetch and read_threads must be non-negative, got {prefetch} and {read_threads}")
  if batch_size < 1:
    raise UserError(f"batch size must be positive, got {batch_size}")
  per_shard = len(source) // process_count
  if per_shard < batch_size:
    raise UserError(f"the dataset has {len(source)} examples, {per_shard} per process: too few for a batch "
                    f"of {batch_size}; prepare more data or lower the batch size")
  if process_count == 1:  # the same order; kept as grain's own sampler so older iterator states still restore
    sampler = grain.IndexSampler(num_records=len(source), shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                                 shard_options=grain.ShardOptions(0, 1, drop_remainder=True))
  else:
    sampler = GlobalBatchSampler(len(source), global_batch=batch_size * process_count, process_index=process_index,
                                 process_count=process_count, shuffle=shuffle, seed=seed, num_epochs=num_epochs)
  ops = list(operations) or [ImageCaption()]
  # A small read-ahead: the default (500 records) would hold far more decoded images than a step needs.
  read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch_size, 16))
  loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                            shard_options=grain.ShardOptions(process_index, process_count, drop_remainder=True),
                            operations=ops + [grain.Batch(batch_size, drop_remainder=True)], read_options=read)
  return Prefetch(loader, prefetch) if prefetch else loader


class Prefetch:
  """An iterable over `loader` (a grain DataLoader) whose iterators prepare `size` batches ahead."""

  def __init__(self, loader, size: int = 2):
    if size < 1:
      raise ValueError(f"prefetch size must be positive, got {size}")
    self.loader, self.size = loader, size

  def __iter__(self) -> PrefetchIterator:
    return PrefetchIterator(iter(self.loader), self.size)


_END = object()


class PrefetchIterator:
  """Runs a grain iterator in a daemon thread, at most `size` batches ahead of `next()`.

  `get_state()` is the inner iterator's state after the last batch this iterator returned (recorded
  by the thread as it made each batch), so saving it and `set_state` on a fresh iterator resume right
  after that batch, exactly as without prefetching; `set_state` stops the thread and discards what it
  had read ahead. An exception in the thread (including the end of a finite loader) is raised by the
  `next()` that reaches it.
  """

  def __init__(self, inner, size: int = 2):
    self._inner, self._size = inner, size
    self._state = inner.get_state()
    self._thread: threading.Thread | None = None
    self._queue: queue.Queue | None = None
    self._stop: threading.Event | None = None
    self._done = None  # the exception that ended the stream, once next() reached it

  def __iter__(self) -> Iterator:
    return self

  def _start(self) -> None:
    self._queue, self._stop = queue.Queue(maxsize=self._size), threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(self._inner, self._queue, self._stop),
                                    name="unclip_jax-prefetch", daemon=True)
    self._thread.start()

  @staticmethod
  def _produce(inner, out: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
      while not stop.is_set():
        try:
          out.put(item, timeout=0.1)
          return True
        except queue.Full:
          continue
      return False

    while not stop.is_set():
      try:
        batch = next(inner)
      except BaseException as e:  # noqa: BLE001 - handed to the consumer, StopIteration included
        put((_END, e))
        return
      if not put((batch, inner.get_state())):
        return

  def __next__(self):
    if self._done is not None:
      raise self._done
    if self._thread is None:
      self._start()
    batch, state = self._queue.get()
    if batch is _END:
      self._done = state
      raise state
    self._state = state
    return batch

  def get_state(self) -> bytes:
    return self._state

  def set_state(self, state: bytes) -> None:
    self.close()
    self._inner.set_state(state)
    self._state, self._done = self._inner.get_state(), None

  def __del__(self):
    if getattr(self, "_stop", None) is not None:  # dropped without close(): let the thread end on its own
      self._stop.set()

  def close(self) -> None:
    """Stops the thread; the batches it had read ahead are dropped and the inner iterator is rewound
    to `get_state()`, so a later `next()` continues right after the last batch returned."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = self._queue = self._stop = None
      self._inner.set_state(self._state)


def specs(batch: dict[str, Any]) -> list[dict[str, Any]]:
  """The decoded per-example specs of a batch from a builder that stores them (e.g. `shapes`)."""
  return [json.loads(s) for s in batch["spec"]]
