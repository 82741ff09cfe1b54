"""Where a run reports: a progress bar on the terminal, `metrics.jsonl` and TensorBoard event files.

Only process 0 writes. The JSONL file is appended to (a resumed run continues it), one object per
logged step, so `jq`/pandas read it directly; TensorBoard reads `WORKDIR/tensorboard` (scalars and the
stages' sample grids). A run resumed from step s first drops the rows logged after s (they will be
logged again), from the JSONL file (rewritten atomically) and from TensorBoard (its purge step).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from unclip_jax.io import write_text_atomic


class MetricsWriter:
  """Metric rows and images of one run. `resume_step`: the step the run restarts from (0 for a new run);
  rows logged past it by an earlier attempt are dropped."""

  def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled and jax.process_index() == 0
    self.path = Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if resume_step:
        drop_rows_after(self.path, resume_step)
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=(resume_step + 1) if resume_step else None)
      except ImportError:  # TensorBoard output is optional; the JSONL file always exists
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": round(time.time(), 3)}
    row.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()})
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), int(step))

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """A uint8 HWC image (e.g. a sample grid) to TensorBoard."""
    if self.enabled and self._tb is not None:
      self._tb.add_image(tag, np.asarray(image, np.uint8), int(step), dataformats="HWC")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
  """The rows of `metrics.jsonl`, in order."""
  path = Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def drop_rows_after(path: Path, step: int) -> int:
  """Rewrites the JSONL file `path` (atomically) without its rows past `step`; returns how many it dropped."""
  if not path.exists():
    return 0
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
  if len(keep) != len(lines):
    write_text_atomic(path, "".join(line + "\n" for line in keep))
  return len(lines) - len(keep)
