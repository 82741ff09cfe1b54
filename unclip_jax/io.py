"""Atomic file output: every file a CLI writes appears whole or not at all.

Writers create a temporary file in the destination folder and `os.replace` it into place, so an
interrupted run never leaves a truncated PNG, JSON sidecar or metrics file behind. The file gets the
permissions a plain `open` would give it (0666 less the umask), not the temporary file's private 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
  """0666 less the process umask (read by setting and restoring it, once, at import)."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


FILE_MODE = _file_mode()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), FILE_MODE)
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
