"""How `bench peers` times a row: the peer's best mode chosen in warm-up, then ours and the peer
alternating round by round (the order flipped every round), medians reported, with peak device memory."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from unclip_jax.bench import torch_peers as tp
from unclip_jax.bench.memory import device_peak_bytes
from unclip_jax.errors import UserError


def _timed(fn: Callable) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def choose_peer(row, mode: str, log) -> tuple[tp.Peer, Callable, list[dict]]:
  """The peer's best mode for this row (`--peer-mode`, see `bench.peers`): each candidate warmed up
  (compiled), then timed twice; the fastest (by its faster call) wins. Returns (peer, its callable, the trials)."""
  if mode == "fp16" and not row.inference:
    raise UserError(f"--peer-mode fp16 is for rows without gradients; {row.name!r} trains (use eager or best)")
  base = tp.Peer()
  base.reset_peak()
  candidates = []
  if mode in ("eager", "best"):
    candidates.append(tp.Peer("eager"))
    if mode == "best" and not base.gpu and base.threads > 1:
      candidates.append(tp.Peer("eager", 1))
  if row.inference and (mode == "fp16" or (mode == "best" and base.gpu)):
    candidates.append(tp.Peer("eager", half=True))
  trials = []
  best = None
  for peer in candidates:
    try:
      trials.append(_trial(row, peer))
    except Exception as e:  # noqa: BLE001 - an op without a float16 kernel on this device: the others stay
      if peer.half and mode == "best":
        trials.append({"mode": peer.describe(), "error": f"{type(e).__name__}: {str(e)[:200]}"})
        continue
      if peer.half:
        raise UserError(f"the float16 peer failed on {row.name}: {type(e).__name__}: {e}") from None
      raise
    best = best if best is not None and best[1] <= trials[-1]["s"] else (peer, trials[-1]["s"])
  if mode in ("compile", "best"):
    peer = tp.Peer("compile", best[0].threads if best else None, half=bool(best and best[0].half))
    try:
      trials.append(_trial(row, peer))
      if best is None or trials[-1]["s"] < best[1]:
        best = (peer, trials[-1]["s"])
    except Exception as e:  # noqa: BLE001 - no compiler, an unsupported op: eager stays the peer's best
      if mode == "compile":
        raise UserError(f"torch.compile failed for {row.name}: {type(e).__name__}: {e}") from None
      trials.append({"mode": peer.describe(), "error": f"{type(e).__name__}: {str(e)[:200]}"})
  for t in trials:
    log(f"    peer {t['mode']}: " + (f"{t['s']:.3f} s" if "s" in t else f"failed ({t['error']})"))
  peer = best[0]
  peer.activate()
  peer.prepare(*row.modules)
  return peer, row.make_peer(peer), trials


def _trial(row, peer: tp.Peer) -> dict:
  peer.activate()
  peer.prepare(*row.modules)
  fn = row.make_peer(peer)
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  return {"mode": peer.describe(), "first_call_s": round(first, 3), "s": min(_timed(fn), _timed(fn))}


def run_row(row, rounds: int, mode: str, log=print) -> dict:
  """Warm-up, then `rounds` alternating timings of ours and the peer (order flipped every round)."""
  start = time.perf_counter()
  row.ours()
  ours_first = time.perf_counter() - start
  row.ours()
  peer, peer_fn, trials = choose_peer(row, mode, log)
  times = {"ours": [], "peer": []}
  for r in range(rounds):
    order = (("ours", row.ours), ("peer", peer_fn))
    for who, fn in (order if r % 2 == 0 else order[::-1]):
      if who == "peer":
        peer.activate()
      times[who].append(_timed(fn))
  ours_s, peer_s = float(np.median(times["ours"])), float(np.median(times["peer"]))
  memory = {"ours_peak_bytes": device_peak_bytes(), "peer_peak_bytes": peer.peak_bytes()}
  return {"name": row.name, "ours_s": round(ours_s, 6), "peer_s": round(peer_s, 6),
          "ratio": round(peer_s / ours_s, 3), "peer_mode": peer.describe(), "ours_first_call_s": round(ours_first, 2),
          "rounds": rounds, "ours_all_s": [round(t, 6) for t in times["ours"]],
          "peer_all_s": [round(t, 6) for t in times["peer"]], "peer_trials": trials, **memory, **row.info}
