"""XLA flag defaults the command-line tools set on start-up, when the user has not set `XLA_FLAGS`.

XLA reads `XLA_FLAGS` once, when JAX first initialises a backend, so `apply_defaults()` must run before
anything touches a device (importing jax is fine; the CLIs call it first thing in `main`). It never
overrides a user's choice: with `XLA_FLAGS` already in the environment (even empty) nothing changes, and
once a backend is up it does nothing either. This module does not import jax.

The defaults only change the host (CPU) platform; a GPU/TPU run ignores them:
  * `--xla_force_host_platform_device_count=N` splits the host into N virtual devices, N = `cpu_devices()`
    (2 when the host has at least 2 cores). Every train step and sampling call then runs data-parallel
    over the N devices, as on a multi-accelerator machine: XLA:CPU's convolutions (YNNPACK) scale poorly
    from one to two threads inside one device, two devices keep both cores busy (measured with
    `python -m unclip_jax.bench peers` and `bench scaling`; README "Benchmarks").
jax 0.10's XLA:CPU already hands dots, convolutions, elementwise chains and reductions to YNNPACK by
default (`--xla_cpu_experimental_ynn_fusion_type`), so no fusion flag is set: setting it to
`dot,eltwise,reduce` made the demo's CLIP, prior and decoder train steps 1.9x, 1.7x and 1.2x slower
(`bench train`, README "Benchmarks"). Four more XLA CPU flags (512-bit vectors, single-threaded Eigen, the
concurrency-optimised scheduler, the XNNPACK runtime) did not beat the defaults on the decoder train step either.
Set `XLA_FLAGS` yourself
(e.g. `XLA_FLAGS=` for XLA's own defaults: one device) to opt out; `UNCLIP_JAX_CPU_DEVICES=N` changes only
the device count.

`enable_compile_cache()` is the other start-up default (of every CLI but `bench`, which times compiles): JAX's
persistent compilation cache, so a command run again loads its compiled programs from disk instead of
compiling them (the packaged demo's `sample` program: 10 s to compile, 3 s the second time). It lives in
`$XDG_CACHE_HOME/unclip_jax/jax_compile` (`~/.cache/...`); `UNCLIP_JAX_COMPILE_CACHE=DIR` moves it,
`UNCLIP_JAX_COMPILE_CACHE=off` turns it off, and a cache JAX already has (`JAX_COMPILATION_CACHE_DIR`) wins.
This function imports jax; nothing else here does.
"""

from __future__ import annotations

import os
import sys

ENV = "XLA_FLAGS"
DEVICES_ENV = "UNCLIP_JAX_CPU_DEVICES"
CACHE_ENV = "UNCLIP_JAX_COMPILE_CACHE"
CACHE_OFF = ("", "0", "off", "false", "no")
DEVICE_FLAG = "--xla_force_host_platform_device_count"
MAX_DEFAULT_DEVICES = 2


def cpu_devices(cpu_count: int | None = None, environ=None) -> int:
  """The number of virtual CPU devices the defaults ask for: `UNCLIP_JAX_CPU_DEVICES` if set, else
  min(2, cores)."""
  environ = os.environ if environ is None else environ
  wanted = environ.get(DEVICES_ENV, "").strip()
  if wanted:
    try:
      n = int(wanted)
    except ValueError:
      n = 0
    if n < 1:
      raise ValueError(f"{DEVICES_ENV} must be a positive whole number, got {wanted!r}")
    return n
  cores = cpu_count if cpu_count is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                   else (os.cpu_count() or 1))
  return max(1, min(MAX_DEFAULT_DEVICES, int(cores)))


def default_flags(cpu_count: int | None = None, environ=None) -> str | None:
  """The `XLA_FLAGS` value `apply_defaults` sets; None when `JAX_NUM_CPU_DEVICES` (JAX's own setting of
  the device count) is in the environment."""
  environ = os.environ if environ is None else environ
  if "JAX_NUM_CPU_DEVICES" in environ:
    return None
  return f"{DEVICE_FLAG}={cpu_devices(cpu_count, environ)}"


def _backend_started() -> bool:
  """Whether JAX has already created a backend in this process (then XLA_FLAGS is read already)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def apply_defaults(environ=None) -> str | None:
  """Sets `XLA_FLAGS` to `default_flags()` unless the user set it or a backend is already running.

  Returns the value set, or None when nothing changed.
  """
  environ = os.environ if environ is None else environ
  if ENV in environ or _backend_started():
    return None
  flags = default_flags(environ=environ)
  if flags is not None:
    environ[ENV] = flags
  return flags


def compile_cache_dir(environ=None) -> str | None:
  """The folder of the CLIs' compilation cache: `UNCLIP_JAX_COMPILE_CACHE` if set (None when it says off),
  else `$XDG_CACHE_HOME/unclip_jax/jax_compile`, `~/.cache/unclip_jax/jax_compile` without XDG_CACHE_HOME."""
  environ = os.environ if environ is None else environ
  if CACHE_ENV in environ:
    wanted = environ[CACHE_ENV].strip()
    return None if wanted.lower() in CACHE_OFF else os.path.expanduser(wanted)
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "unclip_jax", "jax_compile")


def enable_compile_cache(environ=None) -> str | None:
  """Turns on JAX's persistent compilation cache in `compile_cache_dir()`, unless it is off or JAX already
  has a cache folder. Returns the folder set, or None; a folder that cannot be made leaves the cache off
  (it only saves time)."""
  import jax

  if jax.config.jax_compilation_cache_dir:
    return None
  path = compile_cache_dir(environ)
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  return path
