"""Atomic file output: every file a CLI writes appears whole or not at all.

Writers create a temporary file in the destination folder and `os.replace` it into place, so an
interrupted run never leaves a truncated PNG, JSON sidecar or metrics file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
  return write_bytes_atomic(path, text.encode("utf-8"))
