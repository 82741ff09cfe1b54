"""A sampling run's output files: collected in memory, then written all at once, each file atomically,
and all of them removed again if any write fails (a run leaves its complete output or nothing)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from unclip_jax.errors import UserError, check_writable
from unclip_jax.images import png_bytes, to_uint8
from unclip_jax.io import write_bytes_atomic


def gif_bytes(frames: Sequence[np.ndarray], ms: int = 250) -> bytes:
  """uint8 frames → a looping GIF, `ms` per frame."""
  buf = io.BytesIO()
  ims = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
  ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=ms, loop=0)
  return buf.getvalue()


def trajectory_frames(pred_x0: np.ndarray, size: int, max_frames: int = 10) -> list[np.ndarray]:
  """Every few steps' predicted x0 (steps, h, w, 3) in [-1, 1] → uint8 frames at `size` (nearest), last included."""
  steps = pred_x0.shape[0]
  idx = sorted(set(np.linspace(0, steps - 1, min(steps, max_frames)).round().astype(int).tolist()))
  frames = to_uint8(np.clip(pred_x0[idx], -1, 1))
  k = max(1, size // frames.shape[1])
  return [np.repeat(np.repeat(f, k, axis=0), k, axis=1) for f in frames]


RESULT_FILE = re.compile(r"^(grid\.png|\d{4,}(_trajectory)?\.(png|json|gif))$")


class OutputSet:
  """Files of one run under `out`; `commit` writes them (each atomically) and returns their paths. A
  folder that holds earlier results is refused unless `overwrite` (checked at once, before slow work)."""

  def __init__(self, out: str, *, overwrite: bool = False):
    self.out = Path(out)
    check_writable(self.out, "--out", folder=True)
    if not overwrite and self.out.is_dir():
      earlier = sorted(p.name for p in self.out.iterdir() if RESULT_FILE.match(p.name))
      if earlier:
        raise UserError(f"--out {self.out} holds earlier results ({earlier[0]}"
                        + (f" and {len(earlier) - 1} more" if len(earlier) > 1 else "")
                        + "); choose another folder or pass --overwrite to replace them")
    self.files: dict[str, bytes] = {}

  def png(self, name: str, image: np.ndarray) -> None:
    self.files[name] = png_bytes(image)

  def gif(self, name: str, frames: Sequence[np.ndarray], ms: int = 250) -> None:
    self.files[name] = gif_bytes(frames, ms)

  def json(self, name: str, obj) -> None:
    self.files[name] = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()

  def trajectories(self, names: Sequence[str], trajectories: np.ndarray, size: int) -> None:
    """NAME_trajectory.png (frames side by side) and .gif per image."""
    for name, traj in zip(names, trajectories):
      frames = trajectory_frames(traj, size)
      self.png(f"{name}_trajectory.png", np.concatenate(frames, axis=1))
      self.gif(f"{name}_trajectory.gif", frames)

  def commit(self) -> list[Path]:
    written = []
    try:
      for name, data in self.files.items():
        written.append(write_bytes_atomic(self.out / name, data))
    except BaseException:
      for p in written:
        p.unlink(missing_ok=True)
      raise
    return written
