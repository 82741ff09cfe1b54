"""Test set-up: 8 virtual CPU devices, before JAX initialises its backends."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# Persistent compilation cache: the end-to-end tests compile the same train steps and samplers in
# several runs (resume, 1 vs 8 devices); caching turns the repeats from ~20 s into ~1 s.
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "unclip_jax_test_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  """Spread the tests marked `slow` (over ~20 s on a 2-core CPU) over the xdist workers, each at the head
  of its share. The work-stealing scheduler (setup.cfg) hands worker i the i-th contiguous share of the
  collection and lets an idle worker steal the tail of a busy one's queue; in file order the slowest tests
  (multi-process training) sat at the end, where one worker could be left running them alone.
  The order is the same in every worker, as xdist requires; without xdist nothing moves."""
  workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
  if workers < 2:
    return
  slow = [item for item in items if item.get_closest_marker("slow") is not None]
  fast = [item for item in items if item.get_closest_marker("slow") is None]
  order, left = [], len(items)
  for i in range(workers):  # the scheduler's own split: len(pending) // workers left to serve
    size = left // (workers - i)
    head = slow[i::workers]
    order += head + fast[:size - len(head)]
    fast = fast[max(0, size - len(head)):]
    left -= size
  items[:] = order + fast


@pytest.fixture(scope="session")
def pipe_dir(tmp_path_factory):
  """A tiny random-weight pipeline folder, written once per test process (CLI and pipeline tests share it,
  so `sample`'s in-process pipeline cache keeps its compiled programs between them)."""
  from unclip_jax.pipeline import make_random_pipeline

  return make_random_pipeline(tmp_path_factory.mktemp("pipe") / "tiny", "tiny", seed=0)
