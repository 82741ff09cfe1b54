"""Where a run reports: a progress bar on the terminal, `metrics.jsonl` and TensorBoard event files.

Only process 0 writes. The JSONL file is appended to (a resumed run continues it), one object per
logged step, so `jq`/pandas read it directly; TensorBoard reads `WORKDIR/tensorboard`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

import jax


class MetricsWriter:
  def __init__(self, workdir: str | Path, *, enabled: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self.path = Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
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

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
  """The rows of `metrics.jsonl`, in order."""
  path = Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
