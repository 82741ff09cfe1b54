"""The one exception type for mistakes a user can make, the argument parser and the CLI wrapper that report it.

A `UserError` carries a one-line message that names what is wrong and how to fix it. It subclasses
`ValueError` so library callers can catch it the ordinary way. Command-line entry points run their
`main` through `run_cli`, which prints `error: <message>` on stderr and exits with status 2 instead
of showing a traceback. An `OSError` (the system refused a file operation mid-run: disk full, a folder
removed or made read-only) is one `error:` line with exit status 1; any other exception is a bug and keeps
its traceback. Every entry point parses its flags with `ArgumentParser`, whose usage errors are
`UserError`s too, and checks where it will write (`check_writable`) before its slow work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn, Sequence


class UserError(ValueError):
  """Bad input from the user: a one-line, actionable message."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors raise `UserError` (so `run_cli` prints one line and exits 2); its
  sub-command parsers are of this class too."""

  def error(self, message):
    raise UserError(f"{message} (see --help)")


def positive_ints(text: str, flag: str) -> list[int]:
  """A comma-separated list of positive whole numbers given to `flag` (e.g. "1,2,4"); UserError otherwise."""
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise UserError(f"{flag} must be comma-separated whole numbers, got {text!r}") from None
  if not values or any(v < 1 for v in values):
    raise UserError(f"{flag} must be positive, got {text!r}")
  return values


def check_writable(path: str | os.PathLike, flag: str, *, folder: bool = False) -> Path:
  """`path`, a file or (`folder`) a folder a command will create or replace, if it can be written; otherwise a
  UserError naming `flag`. Why: checked before the slow work, a mistyped or read-only location fails at once with one
  line, not with a traceback after a long run. It probes by creating (and removing) an empty folder in the
  nearest existing folder at or above `path`, which also catches what permission bits miss (read-only
  mounts, /proc, running as root)."""
  target = Path(path).expanduser().absolute()
  if folder and target.exists() and not target.is_dir():
    raise UserError(f"{flag} {path} exists and is not a folder")
  parent = target
  while not parent.exists():
    parent = parent.parent
  if parent == target and not parent.is_dir():
    parent = parent.parent  # an existing file is replaced inside its own folder
  if not parent.is_dir():
    raise UserError(f"{flag} {path}: {parent} is a file, not a folder; choose another location")
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".unclip_jax_write_check.", dir=parent))
  except OSError as e:
    raise UserError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e}); choose another location") from None
  return target


def run_cli(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> NoReturn:
  """Runs `main(argv)` and exits: 0 on success, 2 with one `error:` line on a `UserError`, 1 with one on an
  `OSError`."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    code = main(argv)
  except UserError as e:
    message = " ".join(str(e).split())  # one line, whatever the message held
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    where = f": {e.filename}" if e.filename else ""
    print(f"error: {e.strerror or e}{where}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)
