"""The XLA CPU flag defaults the CLIs set (`unclip_jax.xla_flags`): never over a user's XLA_FLAGS, never after
JAX started, and every CLI entry point applies them first thing."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unclip_jax import xla_flags

ROOT = Path(__file__).resolve().parents[2]
CLIS = ("unclip_jax/train/__main__.py", "unclip_jax/sample.py", "unclip_jax/bench/__main__.py", "unclip_jax/embed.py",
        "unclip_jax/zeroshot.py", "unclip_jax/evaluate.py")


def test_defaults_fill_only_an_unset_xla_flags(monkeypatch):
  monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)  # this test process has a backend already
  env = {}
  assert xla_flags.apply_defaults(env) == env["XLA_FLAGS"]
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count={xla_flags.cpu_devices()}"
  for user in ("", "--xla_cpu_enable_fast_math=false"):  # the user's value, even empty, is kept
    env = {"XLA_FLAGS": user}
    assert xla_flags.apply_defaults(env) is None and env == {"XLA_FLAGS": user}
  env = {xla_flags.DEVICES_ENV: "3"}
  xla_flags.apply_defaults(env)
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
  env = {"JAX_NUM_CPU_DEVICES": "4"}  # JAX's own device-count setting wins: no second one
  assert xla_flags.apply_defaults(env) is None and "XLA_FLAGS" not in env
  assert xla_flags.cpu_devices(cpu_count=1, environ={}) == 1
  assert xla_flags.cpu_devices(cpu_count=64, environ={}) == xla_flags.MAX_DEFAULT_DEVICES
  with pytest.raises(ValueError, match="UNCLIP_JAX_CPU_DEVICES must be a positive whole number"):
    xla_flags.cpu_devices(environ={xla_flags.DEVICES_ENV: "two"})


def test_nothing_changes_once_jax_has_a_backend():
  import jax

  jax.devices()
  env = {}
  assert xla_flags.apply_defaults(env) is None and env == {}


def test_a_fresh_process_gets_the_default_devices():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env[xla_flags.DEVICES_ENV] = "2"
  code = ("from unclip_jax import xla_flags; import jax; flags = xla_flags.apply_defaults(); "
          "import json; print(json.dumps([flags, jax.local_device_count(), jax.default_backend()]))")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
  flags, count, backend = json.loads(out.stdout.strip().splitlines()[-1])
  assert "--xla_force_host_platform_device_count=2" in flags
  assert backend != "cpu" or count == 2


@pytest.mark.parametrize("path", CLIS)
def test_every_cli_applies_the_defaults_before_its_work(path):
  """The first statement of the CLI's main() that does anything is `xla_flags.apply_defaults()` (after the
  argument checks at most), so XLA reads the flags when the command's first array is made."""
  tree = ast.parse((ROOT / path).read_text())
  main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
  calls = [n for n in ast.walk(main) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
           and n.func.attr == "apply_defaults" and getattr(n.func.value, "id", "") == "xla_flags"]
  assert calls, f"{path}: main() does not call xla_flags.apply_defaults()"


def test_the_compile_cache_folder_follows_the_environment(tmp_path):
  assert xla_flags.compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "unclip_jax" / "jax_compile")
  assert xla_flags.compile_cache_dir({xla_flags.CACHE_ENV: str(tmp_path / "c")}) == str(tmp_path / "c")
  assert xla_flags.compile_cache_dir({}).endswith(os.path.join(".cache", "unclip_jax", "jax_compile"))
  for off in ("off", "0", "", "No"):
    assert xla_flags.compile_cache_dir({xla_flags.CACHE_ENV: off, "XDG_CACHE_HOME": str(tmp_path)}) is None


@pytest.mark.parametrize("jax_has_one", [False, True])
def test_a_fresh_process_keeps_its_compiled_programs_unless_jax_has_a_cache_already(tmp_path, jax_has_one):
  ours, theirs = tmp_path / "ours", tmp_path / "theirs"
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update({xla_flags.CACHE_ENV: str(ours), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  if jax_has_one:
    env["JAX_COMPILATION_CACHE_DIR"] = str(theirs)
  code = ("from unclip_jax import xla_flags; import jax, jax.numpy as jnp; print(xla_flags.enable_compile_cache()); "
          "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
  used = theirs if jax_has_one else ours
  assert out.stdout.strip().splitlines()[-1] == ("None" if jax_has_one else str(ours))
  assert any(used.iterdir())  # the program was written to the cache
  assert jax_has_one == (not ours.exists() or not any(ours.iterdir()))


@pytest.mark.parametrize("path", [c for c in CLIS if "bench" not in c])
def test_every_cli_but_bench_keeps_compiled_programs(path):
  """`bench` times compiles, so only the other CLIs turn the persistent compilation cache on."""
  tree = ast.parse((ROOT / path).read_text())
  main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
  assert any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "enable_compile_cache"
             for n in ast.walk(main)), f"{path}: main() does not call xla_flags.enable_compile_cache()"
  assert "enable_compile_cache" not in (ROOT / "unclip_jax/bench/__main__.py").read_text()
