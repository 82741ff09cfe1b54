"""Training curves: the loss of one or more runs against their step, as one PNG.

    python -m unclip_jax.train.curves WORKDIR [WORKDIR ...] --out curves.png [--metric loss]

Each workdir's `metrics.jsonl` gives one panel (log-scale loss, the raw rows and a moving average), titled
with the workdir's name, its steps and its final smoothed value.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from unclip_jax.errors import ArgumentParser, UserError, check_writable, run_cli
from unclip_jax.io import write_bytes_atomic
from unclip_jax.train.metrics import read_metrics


def series(workdir: str | Path, metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of `metric` in a run's metrics.jsonl (rows without it are skipped)."""
  rows = [r for r in read_metrics(workdir) if isinstance(r.get(metric), (int, float))]
  return np.array([r["step"] for r in rows], np.int64), np.array([r[metric] for r in rows], np.float64)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average (shorter at the start), the same length as `values`."""
  c = np.cumsum(np.insert(values, 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(idx - window, 0)
  return (c[idx] - c[lo]) / (idx - lo)


def plot(workdirs: Sequence[str | Path], out: str | Path, metric: str = "loss") -> Path:
  """Writes the PNG (atomically) and returns its path."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise UserError("plotting needs matplotlib (pip install matplotlib)") from None
  data = []
  for w in workdirs:
    steps, values = series(w, metric)
    if not len(steps):
      raise UserError(f"{w} has no {metric!r} rows in metrics.jsonl; is it a training workdir?")
    data.append((Path(w).name, steps, values))
  cols = min(len(data), 3)
  rows = math.ceil(len(data) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  for ax, (name, steps, values) in zip(axes.flat, data):
    smoothed = smooth(values, max(1, len(values) // 20))
    ax.plot(steps, values, color="0.75", linewidth=0.8, label="logged")
    ax.plot(steps, smoothed, color="C0", linewidth=1.5, label="moving average")
    if np.all(values > 0):
      ax.set_yscale("log")
    ax.set_title(f"{name}: {steps[-1]} steps, {metric} {smoothed[-1]:.4g}", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(data):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  import io

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  return write_bytes_atomic(out, buf.getvalue())


def main(argv: Sequence[str]) -> int:
  p = ArgumentParser(prog="python -m unclip_jax.train.curves", description=__doc__.splitlines()[0])
  p.add_argument("workdirs", nargs="+", help="training workdirs (each with metrics.jsonl)")
  p.add_argument("--out", required=True, help="the PNG to write")
  p.add_argument("--metric", default="loss", help="which logged value to plot (default loss)")
  args = p.parse_args(list(argv))
  for w in args.workdirs:
    if not (Path(w) / "metrics.jsonl").is_file():
      raise UserError(f"{w} has no metrics.jsonl; pass training workdirs")
  check_writable(args.out, "--out")
  print(f"wrote {plot(args.workdirs, args.out, args.metric)}")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
