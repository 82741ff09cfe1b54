"""The one exception type for mistakes a user can make, the argument parser and the CLI wrapper that report it.

A `UserError` carries a one-line message that names what is wrong and how to fix it. It subclasses
`ValueError` so library callers can catch it the ordinary way. Command-line entry points run their
`main` through `run_cli`, which prints `error: <message>` on stderr and exits with status 2 instead
of showing a traceback; any other exception is a bug and keeps its traceback. Every entry point parses
its flags with `ArgumentParser`, whose usage errors are `UserError`s too.
"""

from __future__ import annotations

import argparse
import sys
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


def run_cli(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> NoReturn:
  """Runs `main(argv)` and exits: 0 on success, 2 with one `error:` line on a `UserError`."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    code = main(argv)
  except UserError as e:
    message = " ".join(str(e).split())  # one line, whatever the message held
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)
