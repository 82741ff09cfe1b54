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


@pytest.fixture(scope="session")
def pipe_dir(tmp_path_factory):
  """A tiny random-weight pipeline folder, written once per test process (CLI and pipeline tests share it,
  so `sample`'s in-process pipeline cache keeps its compiled programs between them)."""
  from unclip_jax.pipeline import make_random_pipeline

  return make_random_pipeline(tmp_path_factory.mktemp("pipe") / "tiny", "tiny", seed=0)
