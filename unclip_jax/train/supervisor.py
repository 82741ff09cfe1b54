"""Runs one process of a multi-process training job as a child process, to say what ended it.

JAX's coordination client ends a process with a C++ fatal error (SIGABRT) and a stack dump when it loses
the coordination service: at once when process 0, which hosts the service, dies. No Python code in that
process survives it, so the in-process watchdog (`unclip_jax.train.watchdog`) cannot speak. The parent
(this module) forwards the child's output and, when the child dies of a signal, prints the line the
watchdog would have: which process was lost and the last complete checkpoint; it exits `EXIT_LOST`.
Any other exit status is the child's own (it has said what happened).

Signals: SIGTERM is passed on to the child (it saves and exits); SIGINT is not, since a terminal sends it
to the child as well. The child asks the kernel to kill it when the parent dies (`die_with_parent`), so
a scheduler's or a test's kill -9 of the parent ends both.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from unclip_jax.distributed import EXIT_LOST

ENV_CHILD = "UNCLIP_JAX_SUPERVISED"
TAIL_BYTES = 64 << 10  # how much of the child's stderr is kept to find which process was lost


def is_child() -> bool:
  return os.environ.get(ENV_CHILD) == "1"


def die_with_parent() -> None:
  """In the child: be killed (SIGKILL) when the parent dies (Linux `prctl(PR_SET_PDEATHSIG)`; elsewhere
  nothing happens)."""
  try:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
  except (OSError, AttributeError):
    return
  if os.getppid() == 1:  # the parent died before prctl took effect
    os._exit(EXIT_LOST)


def run(argv: list[str], workdir: str, process_index: int | None, process_count: int | None) -> int:
  """Runs `python -m unclip_jax.train ARGV` as a child, forwarding its stderr; returns its exit status,
  or `EXIT_LOST` with our line when a signal killed it."""
  child = subprocess.Popen([sys.executable, "-m", "unclip_jax.train", *argv], env={**os.environ, ENV_CHILD: "1"},
                           stderr=subprocess.PIPE)
  tail = bytearray()
  pump = threading.Thread(target=_forward, args=(child.stderr, tail), daemon=True)
  pump.start()
  previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
  previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    code = child.wait()
  finally:
    signal.signal(signal.SIGTERM, previous_term)
    signal.signal(signal.SIGINT, previous_int)
  pump.join(timeout=5)
  if code >= 0:
    return code
  name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
  who = "process" if process_index is None else f"process {process_index}"
  lost = lost_process(tail.decode("utf-8", "replace"), Path(workdir) / "heartbeat", process_index, process_count)
  from unclip_jax.train.checkpoints import describe_latest_on_disk

  print(f"error: {lost}; {who} was ended by {name} (JAX's coordination client aborts when it loses a peer). "
        f"Last complete checkpoint: {describe_latest_on_disk(workdir)}; rerun the same command on every host "
        "to resume from it", file=sys.stderr, flush=True)
  return EXIT_LOST


def _forward(stream, tail: bytearray) -> None:
  """Copies the child's stderr to ours as it comes, keeping its last `TAIL_BYTES`."""
  out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
  while True:
    chunk = os.read(stream.fileno(), 1 << 16)
    if not chunk:
      return
    if out is not None:
      out.write(chunk)
      out.flush()
    tail.extend(chunk)
    del tail[:-TAIL_BYTES]


def lost_process(stderr_tail: str, heartbeats: Path, process_index: int | None, process_count: int | None) -> str:
  """"lost process K of N: why", from what JAX's client printed, else from the heartbeat files."""
  of = f" of {process_count}" if process_count else ""
  task = re.search(r"/task:(\d+)", stderr_tail)
  if task and (process_index is None or int(task.group(1)) != process_index):
    return f"lost process {task.group(1)}{of}: JAX's coordination service reports it gone"
  if "leader task" in stderr_tail or "Failed to send RPC to coordination service" in stderr_tail:
    return f"lost process 0{of}: JAX's coordination service, which it hosts, is unreachable"
  if process_count == 2 and process_index is not None:
    return f"lost process {1 - process_index}{of}: the coordination service reports a lost peer"
  silent = _least_recent_heartbeat(heartbeats, process_index)
  if silent is not None:
    return f"lost process {silent}{of}: its heartbeat is the oldest"
  return "lost a peer process: the coordination service reports a lost peer"


def _least_recent_heartbeat(directory: Path, process_index: int | None) -> int | None:
  found = []
  for path in directory.glob("process_*"):
    index = path.name.split("_")[-1]
    if not index.isdigit() or int(index) == process_index:
      continue
    try:
      if not path.read_text().endswith(" done"):
        found.append((path.stat().st_mtime, int(index)))
    except OSError:
      continue
  return min(found)[1] if found else None
