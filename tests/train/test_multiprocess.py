"""Two processes × two CPU devices train one model together (gloo collectives on 127.0.0.1), the way
`launch/local_multiprocess.sh` and the multi-host launchers run it, and resume together."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from unclip_jax.data import prepare

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, data_dir, config_name, steps):
  port = free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               UNCLIP_JAX_COORDINATOR=f"127.0.0.1:{port}", UNCLIP_JAX_NUM_PROCESSES="2", UNCLIP_JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "unclip_jax.train", "--config", "configs/clip.py:tiny", "--workdir", str(workdir),
         "--data_dir", str(data_dir), "--no_progress", f"--config.data.config={config_name}",
         f"--config.train.steps={steps}", "--config.train.batch_size=8", "--config.train.log_every=1",
         "--config.train.checkpoint_every=2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=180)[0])
    except subprocess.TimeoutExpired:  # a hung collective ignores SIGTERM: kill
      for q in procs:
        q.kill()
      pytest.fail("the two-process run did not finish in 180 s")
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


@pytest.mark.slow
def test_two_processes_train_and_resume_together(tmp_path):
  builder = prepare.prepare_shapes(str(tmp_path / "data"), image_size=32, train_size=64, heldout_size=8)
  workdir = tmp_path / "run"
  launch(workdir, tmp_path / "data", builder.builder_config.name, steps=3)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]  # one writer: process 0
  assert (workdir / "export" / "stage.json").is_file()
  outputs = launch(workdir, tmp_path / "data", builder.builder_config.name, steps=5)
  assert all("resumed" in out and "at step 3" in out for out in outputs)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
