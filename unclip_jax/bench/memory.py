"""Peak device memory as the benchmarks report it."""

from __future__ import annotations


def device_peak_bytes() -> int | None:
  """The first local device's peak bytes in use since the process started (`memory_stats()`), or None
  where the backend keeps no such count (XLA:CPU). JAX cannot reset it: run one measurement per process
  for a figure of its own."""
  import jax

  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - backends without memory stats
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def gib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB"
