"""A multi-process run's watchdog: a lost peer or a hung collective ends every survivor quickly, with our
one-line message, instead of a C++ abort a minute or more later (or never).

Each process runs a daemon thread that, every `interval` seconds,
  - writes a heartbeat file `WORKDIR/heartbeat/process_<i>` ("<host>:<pid> <count> alive"): the workdir is on
    a filesystem every host sees, and the file works even when the process that hosts JAX's coordination
    service is the one that died;
  - reads the other processes' files: one whose content has not changed for `peer_timeout` seconds (as
    measured here, so clocks need not agree) is lost;
  - checks that the training loop finished a step within `step_timeout` seconds (`progress`): a step that
    takes longer is a collective waiting for a process that will not come.
Either way it prints one `error:` line naming the lost process (or the step) and the last complete
checkpoint, then ends this process with `os._exit(EXIT_LOST)`: the main thread may be blocked inside a
C++ collective, where no Python exception can reach it. The thread needs the GIL only briefly, and the
main thread releases it while it waits on devices, collectives or the compiler.

A process that ends normally writes "done", so its peers stop watching it. Stale files from an earlier,
killed run are harmless: only a change seen by this run counts as a sign of life.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from unclip_jax.distributed import EXIT_LOST


class PeerWatchdog:
  """Heartbeats between the processes of one run, and the step-progress check; see the module docstring."""

  def __init__(self, directory: str | Path, process_index: int, process_count: int, *, peer_timeout: float,
               step_timeout: float, last_checkpoint: Callable[[], str], interval: float = 1.0,
               exit: Callable[[int], None] = os._exit, clock: Callable[[], float] = time.monotonic):
    self.directory = Path(directory)
    self.index, self.count = process_index, process_count
    self.peer_timeout, self.step_timeout, self.interval = float(peer_timeout), float(step_timeout), interval
    self._last_checkpoint, self._exit, self._clock = last_checkpoint, exit, clock
    self._me = f"{socket.gethostname()}:{os.getpid()}"
    self._beats = 0
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._step, self._progress_at = 0, clock()
    self._peers: dict[int, tuple[str | None, float]] = {}  # index -> (content last read, when it last changed)
    self._done: set[int] = set()
    self.verdict: str | None = None  # the message, once a failure was found

  def _path(self, index: int) -> Path:
    return self.directory / f"process_{index}"

  def start(self) -> "PeerWatchdog":
    self.directory.mkdir(parents=True, exist_ok=True)
    now = self._clock()
    self._peers = {i: (self._read(i), now) for i in range(self.count) if i != self.index}
    self._step, self._progress_at = 0, now
    self._beat("alive")
    self._thread = threading.Thread(target=self._run, name="unclip_jax-watchdog", daemon=True)
    self._thread.start()
    return self

  def progress(self, step: int) -> None:
    """The training loop finished `step` (called from the main thread)."""
    self._step, self._progress_at = step, self._clock()

  def stop(self, state: str = "done") -> None:
    """Ends the watch and tells the peers this process finished (they stop watching it)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    self._beat(state)

  def await_verdict(self) -> str | None:
    """After an exception in the main thread (e.g. a collective that failed because a peer vanished):
    waits up to the peer timeout for the thread to find a lost peer, which ends the process; returns None
    (and stops watching) if every peer is still alive, so the exception is the story."""
    deadline = self._clock() + self.peer_timeout + 3 * self.interval
    while self.verdict is None and self._clock() < deadline and self._thread is not None and self._thread.is_alive():
      time.sleep(self.interval / 4)
    if self.verdict is None:
      self.stop()
    return self.verdict

  # ------------------------------------------------------------------------------------- the thread

  def _run(self) -> None:
    while not self._stop.wait(self.interval):
      self._beat("alive")
      message = self.check()
      if message is not None:
        self._fail(message)
        return

  def check(self) -> str | None:
    """One look at the peers' heartbeats and at the step progress: the failure message, or None."""
    now = self._clock()
    for i, (content, since) in sorted(self._peers.items()):
      if i in self._done:
        continue
      current = self._read(i)
      if current != content:
        self._peers[i] = (current, now)
        if current is not None and current.endswith(" done"):
          self._done.add(i)
        continue
      if now - since > self.peer_timeout:
        return (f"lost process {i} of {self.count}: no heartbeat for {now - since:.0f} s "
                f"(train.peer_timeout_s={self.peer_timeout:g}); process {self.index} stops too")
    if now - self._progress_at > self.step_timeout:
      return (f"no training step finished for {now - self._progress_at:.0f} s after step {self._step} "
              f"(train.step_timeout_s={self.step_timeout:g}): a collective is waiting for a process that does "
              f"not answer; process {self.index} stops")
    return None

  def _fail(self, message: str) -> None:
    try:
      checkpoint = self._last_checkpoint()
    except Exception as e:  # noqa: BLE001 - the exit below matters more than the checkpoint name
      checkpoint = f"unknown ({type(e).__name__})"
    self.verdict = (f"error: {message}. Last complete checkpoint: {checkpoint}; rerun the same command on every "
                    "host to resume from it")
    os.write(2, (self.verdict + "\n").encode())  # not print(): the main thread may hold sys.stderr's lock
    self._exit(EXIT_LOST)

  # --------------------------------------------------------------------------------------- files

  def _beat(self, state: str) -> None:
    self._beats += 1
    path = self._path(self.index)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
      tmp.write_text(f"{self._me} {self._beats} {state}")
      os.replace(tmp, path)
    except OSError:  # a full or flaky disk: the peers will notice; nothing to do here
      pass

  def _read(self, index: int) -> str | None:
    try:
      return self._path(index).read_text()
    except OSError:
      return None
