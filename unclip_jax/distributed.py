"""Joining a multi-process (multi-host) JAX job, as the launchers in `launch/` ask for it.

The launchers set environment variables; entry points call `initialize_from_env()` before touching any
device. Nothing is set → a single-process run, as on a laptop or one GPU machine.

  UNCLIP_JAX_COORDINATOR=host:port, UNCLIP_JAX_NUM_PROCESSES=N, UNCLIP_JAX_PROCESS_ID=i
      explicit cluster (GPU nodes, or N processes on one machine for testing);
  UNCLIP_JAX_DISTRIBUTED=auto
      let JAX find the cluster itself (TPU pod slices, SLURM, Open MPI).

Failure detection is ours: inside the job, `unclip_jax.train.watchdog` ends every survivor of a lost
peer or a hung step within `train.peer_timeout_s` (or `train.step_timeout_s`) with one line naming the
lost process and the checkpoint to resume from. JAX's coordination client aborts a process with a C++
fatal error when it loses the coordination service (at once, when process 0, which hosts it, dies), which
no Python code in that process survives: `unclip_jax.train.supervisor` runs each multi-process training
process as a child and says the same line for it. JAX's own heartbeat timeout is lowered from 100 s to
`COORDINATION_HEARTBEAT_S` (a backstop, after our watchdog's), and shutdown waits at most
`SHUTDOWN_TIMEOUT_S` for the others.
"""

from __future__ import annotations

import inspect
import os

import jax

from unclip_jax.errors import UserError

ENV_COORDINATOR = "UNCLIP_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "UNCLIP_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "UNCLIP_JAX_PROCESS_ID"
ENV_AUTO = "UNCLIP_JAX_DISTRIBUTED"
EXIT_LOST = 3  # a peer was lost or a collective hung: rerun the same command to resume
COORDINATION_HEARTBEAT_S = 50  # longer than the watchdog's default 20 s
SHUTDOWN_TIMEOUT_S = 60


def timeout_options() -> dict:
  """The heartbeat and shutdown timeouts for `jax.distributed.initialize`, those this JAX accepts
  (`heartbeat_timeout_seconds` and `shutdown_timeout_seconds` exist since JAX 0.4.3x; older or newer
  signatures without them get JAX's defaults)."""
  try:
    accepted = inspect.signature(jax.distributed.initialize).parameters
  except (TypeError, ValueError):
    return {}
  wanted = {"heartbeat_timeout_seconds": COORDINATION_HEARTBEAT_S, "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT_S}
  return {k: v for k, v in wanted.items() if k in accepted}


def requested() -> tuple[bool, int | None, int | None]:
  """(a multi-process job is asked for, this process's index, the process count), from the environment
  alone, without initializing anything (indices are None where JAX finds the cluster itself)."""
  if os.environ.get(ENV_COORDINATOR):
    try:
      return True, int(os.environ[ENV_PROCESS_ID]), int(os.environ[ENV_NUM_PROCESSES])
    except (KeyError, ValueError):
      return True, None, None  # initialize_from_env says what is wrong
  return os.environ.get(ENV_AUTO, "").lower() == "auto", None, None


def initialize_from_env() -> bool:
  """Calls `jax.distributed.initialize` as the environment asks; True if this is a multi-process job."""
  coordinator = os.environ.get(ENV_COORDINATOR)
  if coordinator:
    try:
      num_processes = int(os.environ[ENV_NUM_PROCESSES])
      process_id = int(os.environ[ENV_PROCESS_ID])
    except (KeyError, ValueError):
      raise UserError(f"{ENV_COORDINATOR} is set, so {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers "
                      "too (see launch/)") from None
    if not 0 <= process_id < num_processes:
      raise UserError(f"{ENV_PROCESS_ID}={process_id} must lie in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               **timeout_options())
    return True
  if os.environ.get(ENV_AUTO, "").lower() == "auto":
    jax.distributed.initialize(**timeout_options())
    return True
  return False


_finished = False


def finish() -> None:
  """Ends a multi-process job cleanly: every process waits for the others, then leaves the cluster
  (without this, a process can block at exit in the CPU collectives). Idempotent: the training loop
  calls it while its watchdog still runs, the CLI again after."""
  global _finished
  if jax.process_count() > 1 and not _finished:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("unclip_jax finished")
    jax.distributed.shutdown()
    _finished = True
