"""Joining a multi-process (multi-host) JAX job, as the launchers in `launch/` ask for it.

The launchers set environment variables; entry points call `initialize_from_env()` before touching any
device. Nothing is set → a single-process run, as on a laptop or one GPU machine.

  UNCLIP_JAX_COORDINATOR=host:port, UNCLIP_JAX_NUM_PROCESSES=N, UNCLIP_JAX_PROCESS_ID=i
      explicit cluster (GPU nodes, or N processes on one machine for testing);
  UNCLIP_JAX_DISTRIBUTED=auto
      let JAX find the cluster itself (TPU pod slices, SLURM, Open MPI).
"""

from __future__ import annotations

import os

import jax

from unclip_jax.errors import UserError

ENV_COORDINATOR = "UNCLIP_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "UNCLIP_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "UNCLIP_JAX_PROCESS_ID"
ENV_AUTO = "UNCLIP_JAX_DISTRIBUTED"


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
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True
  if os.environ.get(ENV_AUTO, "").lower() == "auto":
    jax.distributed.initialize()
    return True
  return False


def finish() -> None:
  """Ends a multi-process job cleanly: every process waits for the others, then leaves the cluster
  (without this, a process can block at exit in the CPU collectives)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("unclip_jax finished")
    jax.distributed.shutdown()
