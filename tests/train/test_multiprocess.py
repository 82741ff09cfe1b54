"""Two processes × two CPU devices train one model together (gloo collectives on 127.0.0.1), the way
`launch/local_multiprocess.sh` and the multi-host launchers run it: they follow one process × four devices
with the same global batch (replicated and ZeRO), a killed peer stops the survivor within a minute with
our message, and rerunning the command resumes and ends where an uninterrupted run ends.

Every launch has a hard deadline after which all its processes are killed, so a hung collective fails
the test instead of hanging CI."""

import json
import re
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import tiny_clip_config
from unclip_jax.errors import UserError
from unclip_jax.train import loop
from unclip_jax.distributed import EXIT_LOST

REPO = Path(__file__).resolve().parents[2]
LAUNCH_DEADLINE_S = 300  # a whole 2-process launch (start-up and compiling on a loaded 2-core machine included)
SURVIVOR_DEADLINE_S = 60  # the bound, from the kill to the survivor's exit
# 4 steps of 8 examples; the optimizer and the EMA change the parameters every step
SETTINGS = {"train.batch_size": 8, "train.log_every": 1, "train.checkpoint_every": 2, "optim.ema_decay": 0.5}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(workdir, data_dir, **overrides) -> list[subprocess.Popen]:
  """Both processes of one 2 × 2 launch, each in its own process group (so a deadline kills all of it)."""
  root, name = data_dir
  settings = {"data.config": name, **SETTINGS, **overrides}
  port = free_port()
  cache = os.path.join(tempfile.gettempdir(), "unclip_jax_test_jax_cache_mp")  # a relaunch skips compiling
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               UNCLIP_JAX_COORDINATOR=f"127.0.0.1:{port}", UNCLIP_JAX_NUM_PROCESSES="2", UNCLIP_JAX_PROCESS_ID=str(pid))
    cmd = [sys.executable, "-m", "unclip_jax.train", "--config", "configs/clip.py:tiny", "--workdir", str(workdir),
           "--data_dir", root, "--no_progress"] + [f"--config.{k}={v}" for k, v in settings.items()]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True))
  return procs


def kill_all(procs) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)


def finish(procs, deadline: float) -> list[str]:
  """Every process's output once all have exited; past `deadline` (time.monotonic) all are killed."""
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
  except subprocess.TimeoutExpired:
    kill_all(procs)
    pytest.fail(f"the two-process launch did not finish by its deadline ({LAUNCH_DEADLINE_S} s)")
  finally:
    kill_all(procs)
  return outputs


def launch(workdir, data_dir, **overrides) -> list[str]:
  procs = start(workdir, data_dir, **overrides)
  outputs = finish(procs, time.monotonic() + LAUNCH_DEADLINE_S)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def one_process(data_dir, workdir, **overrides):
  """The reference: this test process, 4 of its CPU devices, the same global batch."""
  config = tiny_clip_config(data_dir, **{**SETTINGS, "train.num_devices": 4, **overrides})
  return loop.train(config, workdir, progress=False)


def rows(workdir) -> list[dict]:
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def wait_for_rows(procs, workdir, count: int, deadline: float) -> None:
  """Returns once metrics.jsonl holds `count` rows; kills the launch and fails if it ends or the deadline passes."""
  metrics = Path(workdir) / "metrics.jsonl"
  while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= count):
    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
      kill_all(procs)
      pytest.fail(f"the run did not reach step {count}: " + "".join(p.communicate()[0][-3000:] for p in procs))
    time.sleep(0.2)


def exported(workdir):
  """The exported stage tree ({"params", "ema"}) as host arrays."""
  import orbax.checkpoint as ocp

  return ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "export" / "params")


def assert_same_numbers(workdir, reference_workdir, tol: float = 1e-5) -> None:
  """Equal loss curves and exported parameters and EMA, up to the rounding of a different reduction
  order (gloo between processes, XLA within one)."""
  import jax

  a, b = rows(workdir), rows(reference_workdir)
  assert [r["step"] for r in a] == [r["step"] for r in b]
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=tol)
  ta, tb = exported(workdir), exported(reference_workdir)
  assert set(ta) == {"params", "ema"} and jax.tree.structure(ta) == jax.tree.structure(tb)
  for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_global_batch(data_dir, tmp_path):
  """Replicated optimizer; the ZeRO comparison is the end of the kill test below (2 × 2 ZeRO, killed and
  resumed, against 1 × 4 ZeRO), which keeps the suite's wall time down."""
  launch(tmp_path / "mp", data_dir, **{"train.steps": 4})
  one_process(data_dir, tmp_path / "one", **{"train.steps": 4})
  assert [r["step"] for r in rows(tmp_path / "mp")] == [1, 2, 3, 4]  # one writer: process 0
  assert_same_numbers(tmp_path / "mp", tmp_path / "one")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_after_the_same_step(data_dir, tmp_path):
  """A scheduler's SIGTERM may reach the processes of a job at different steps, or only one: the stop is
  voted on inside the step, so both save the same step together and exit cleanly (without the vote the
  signalled process saves while the other waits in the next step's collectives until the deadline)."""
  workdir = tmp_path / "mp"
  procs = start(workdir, data_dir, **{"train.steps": 100_000})  # far more steps than the test waits for
  deadline = time.monotonic() + LAUNCH_DEADLINE_S
  wait_for_rows(procs, workdir, 2, deadline)
  os.kill(procs[1].pid, signal.SIGTERM)  # its supervisor passes it to the training child
  outputs = finish(procs, deadline)
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  stopped = [re.search(r"stopped \(resume with the same command\) at step (\d+)", out) for out in outputs]
  assert all(stopped), outputs[0][-2000:] + outputs[1][-2000:]
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step >= 2
  assert f"another process asked to stop: saving step {step}" in outputs[0]
  assert f"SIGTERM: saving step {step}" in outputs[1]
  assert (workdir / "checkpoints" / str(step)).is_dir()
  assert rows(workdir)[-1]["step"] == step


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "coordinator"])
def test_a_killed_peer_stops_the_survivor_and_the_rerun_resumes_exactly(data_dir, tmp_path, victim):
  """Killing process 1 (the survivor's watchdog notices), or process 0 (which hosts JAX's coordination
  service, so JAX aborts the survivor at once and its supervisor speaks); ZeRO across both processes.
  The rerun after killing process 1 must end equal to an uninterrupted 1 × 4 ZeRO run."""
  overrides = {"train.steps": 8, "train.shard_optimizer": True}
  workdir = tmp_path / "mp"
  procs = start(workdir, data_dir, **overrides)
  wait_for_rows(procs, workdir, 5, time.monotonic() + LAUNCH_DEADLINE_S)  # past the step-4 checkpoint
  os.kill(procs[victim].pid, signal.SIGKILL)
  killed_at = time.monotonic()
  survivor = finish([procs[1 - victim]], killed_at + SURVIVOR_DEADLINE_S + 5)[0]
  took = time.monotonic() - killed_at
  finish(procs, time.monotonic() + 10)
  print(f"survivor exited {took:.1f} s after the kill")
  assert took < SURVIVOR_DEADLINE_S, survivor[-3000:]
  assert procs[1 - victim].returncode == EXIT_LOST, survivor[-3000:]
  ours = [line for line in survivor.splitlines() if line.startswith("error: ")]
  assert len(ours) == 1 and f"process {victim}" in ours[0].split(";")[0], survivor[-3000:]
  complete = int(ours[0].split("Last complete checkpoint: step ")[1].split()[0])
  print(ours[0])
  # step 2 or 4: the step-4 save may still have been under way (async) when the peer died; never a later one
  assert complete in (2, 4) and (workdir / "checkpoints" / str(complete)).is_dir()

  if victim == 0:
    return  # resuming is the same after either loss; checked once
  outputs = launch(workdir, data_dir, **overrides)  # the same command again
  assert all(re.search(rf"resumed \S+ at step {complete}\n", out) for out in outputs), outputs[0][-2000:]
  assert all("finished at step 8" in out for out in outputs)
  reference = one_process(data_dir, tmp_path / "one", **overrides)
  assert_same_numbers(workdir, tmp_path / "one")
  assert reference.state.opt_state["mu"].shape[0] == 4  # the moments are split over the 4 devices
  # A 2-process checkpoint does not resume in one process: each process's data position is its own.
  with pytest.raises(UserError, match="resume with the same process count"):
    one_process(data_dir, workdir, **{**overrides, "train.steps": 10})
