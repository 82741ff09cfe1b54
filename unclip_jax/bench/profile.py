"""`python -m unclip_jax.bench profile`: where a train step or a sampling call spends its time, by kind of work.

    python -m unclip_jax.bench profile [--preset cpu|tiny|karlo] [--stage decoder] [--steps 3] [--top 12]
    python -m unclip_jax.bench profile --program sample [--checkpoint DIR | --random karlo] [--batch 4]

`--program train` (the default) runs the train step that `bench mfu` times (the trainer's pmapped step on
random weights, all local devices); `--program sample` runs what `python -m unclip_jax.sample` runs, text to
images in one compiled program, on a pipeline folder (default: the packaged demo), `--batch` prompts per
call. Either runs under `jax.profiler.trace`; the trace's per-op events are matched to the compiled
programs (XLA's optimised HLO) and each op is sorted into one kind:

  convolution              convolutions whose window is a kernel: forward passes and input gradients
  convolution: weights     convolutions whose window covers the feature map: the weight gradients
  matmul                   dots (dense layers, attention)
  collectives              all-reduce and friends (the gradient mean across devices)
  waiting                  time inside a collective spent waiting for the other devices (rendezvous)
  layout copies            transposes and copies
  elementwise/reductions   every other op: normalisation, activations, the optimizer and EMA updates

Beside the kinds, `idle` is the time the busy threads (one per device) ran no op at all between their first
and last op of the traced steps: the runtime's dispatch and thread-pool hand-offs between ops, which a
program of many small ops pays per op, and the host's time between steps.

A fusion counts as a convolution or matmul when its fused computation holds one; so does a library call
(cuDNN's convolutions, cuBLAS's matmuls). On a GPU the times are the kernels' on the device's streams (the
host's launch events are left out); a kernel is matched to its HLO op by the op the profiler names, or, inside
a CUDA graph (XLA's command buffers), by its own name, and a library kernel with no op of its own by its name
(cuDNN `fprop`/`dgrad`/`wgrad`, cuBLAS `gemm`/`nvjet`); `idle` is then the time the streams ran no kernel.
Times are thread time summed over the devices, per step (per call for sampling); with one thread per device,
their sum over the wall time says how busy the cores were. A kind that takes a large share at low FLOPs is what
stands between the step and the matmul peak (`bench mfu`): that is the profile the speed issue asks for where we
trail PyTorch.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import re
import tempfile
import time
from pathlib import Path

from unclip_jax.errors import ArgumentParser, UserError

KINDS = ("convolution", "convolution: weights", "matmul", "collectives", "waiting", "layout copies",
         "elementwise/reductions")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
WAIT_EVENT = "Rendezvous"  # the profiler's event for a device waiting inside a collective

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_WINDOW = re.compile(r"window=\{size=([\dx]+)")
_LABELS = re.compile(r"dim_labels=\w+_\w+->(\w+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
DEVICE_DETAILS = ("kernel_details", "memcpy_details", "memset_details")  # a GPU trace's device-side events


def _opcode(rest: str) -> tuple[str, str]:
  """(output shape text, opcode) of an instruction's right-hand side: 'f32[2]{0} add(...)' → (..., 'add')."""
  depth, i = 0, 0
  if rest.startswith("("):  # a tuple shape
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        break
    shape, tail = rest[:i + 1], rest[i + 1:].lstrip()
  else:
    shape, _, tail = rest.partition(" ")
  return shape, tail.split("(", 1)[0].strip()


def _conv_kind(shape: str, line: str) -> str:
  """A convolution's kind: its window larger than its output's spatial extent means it sums over the
  feature map, i.e. a weight gradient (a patch-embedding conv's window is smaller than its output)."""
  window, labels, dims = _WINDOW.search(line), _LABELS.search(line), _SHAPE.match(shape)
  if not (window and labels and dims):
    return "convolution"
  sizes = [int(d) for d in dims.group(1).split(",") if d]
  spatial = [sizes[i] for i, c in enumerate(labels.group(1)) if c.isdigit() and i < len(sizes)]
  win = [int(w) for w in window.group(1).split("x")]
  return "convolution: weights" if math.prod(win) > math.prod(spatial) else "convolution"


def _library_kind(target: str) -> str | None:
  """The kind of a library call (a custom-call's target, e.g. `__cudnn$convForward`, `__cublas$lt$matmul`)."""
  t = target.lower()
  if "conv" in t:
    return "convolution: weights" if "backwardfilter" in t else "convolution"
  if any(w in t for w in ("matmul", "gemm", "fmha")):
    return "matmul"
  return None


def kernel_kind(kernel: str) -> str:
  """The kind of a GPU kernel known only by its name (a library's kernel inside a CUDA graph)."""
  k = kernel.lower()
  if k.startswith(("memcpy", "memset")):
    return "layout copies"
  if "wgrad" in k:
    return "convolution: weights"
  if any(w in k for w in ("fprop", "dgrad", "conv")):
    return "convolution"
  if any(w in k for w in ("gemm", "nvjet", "cutlass", "cublas", "matmul", "fmha", "flash")):
    return "matmul"
  return "elementwise/reductions"


def device_events(events: list[dict], kinds: dict[str, str]) -> tuple[list[dict], dict[str, str]]:
  """A GPU trace's kernel events, named by their HLO ops, and the kinds extended by the kernels that have
  none; a trace without device-side events (a CPU's) is returned as it is.

  A kernel run by a plain op carries that op's name (`hlo_op`: `cudnn-conv-bias-activation.7` for cuDNN's
  kernel); one run inside a CUDA graph carries the graph's (`command_buffer_3`), and its own name is then its
  fusion's (`loop_convert_fusion_250` for `loop_convert_fusion.250`) or a library kernel's."""
  device = [e for e in events if any(k in e.get("args", {}) for k in DEVICE_DETAILS)]
  if not device:
    return events, kinds
  kinds = dict(kinds)
  named = []
  for e in device:
    op, kernel = str(e.get("args", {}).get("hlo_op", "")), str(e.get("name", ""))
    fusion = re.sub(r"_(\d+)$", r".\1", kernel)
    name = next((n for n in (op, kernel, fusion) if n in kinds), None)
    if name is None:
      name = kernel
      kinds[name] = kernel_kind(kernel)
    named.append(dict(e, name=name))
  return named, kinds


def classify_hlo(text: str) -> dict[str, str]:
  """Every instruction of an optimised HLO module (its text) → its kind (see the module docstring)."""
  computations: dict[str, list[tuple[str, str, str, str]]] = {}
  current = None
  for line in text.splitlines():
    if not line.startswith(" "):  # a computation's header or its closing brace
      head = _COMPUTATION.match(line)
      current = computations.setdefault(head.group(1), []) if head else None
      continue
    m = _INSTRUCTION.match(line)
    if current is not None and m:
      shape, op = _opcode(m.group(2))
      current.append((m.group(1), shape, op, line))

  def own_kind(shape: str, op: str, line: str) -> str | None:
    if op == "convolution":
      return _conv_kind(shape, line)
    if op == "dot":
      return "matmul"
    if op == "custom-call" and (target := _TARGET.search(line)):
      return _library_kind(target.group(1))
    if any(op.startswith(c) for c in COLLECTIVES):
      return "collectives"
    return None

  inner: dict[str, str | None] = {}

  def computation_kind(name: str, seen=()) -> str | None:
    """The heaviest kind inside a fused computation (convolution > matmul), None if neither."""
    if name in inner:
      return inner[name]
    found = None
    for _, shape, op, line in computations.get(name, []):
      kind = own_kind(shape, op, line)
      if kind is None and (call := _CALLS.search(line)) and call.group(1) not in seen:
        kind = computation_kind(call.group(1), seen + (name,))
      if kind and kind.startswith("convolution"):
        found = kind
        break
      found = found or kind
    inner[name] = found
    return found

  kinds = {}
  for comp in computations.values():
    for name, shape, op, line in comp:
      kind = own_kind(shape, op, line)
      if kind is None and op == "fusion" and (call := _CALLS.search(line)):
        kind = computation_kind(call.group(1))
      if kind is None:
        kind = "layout copies" if op in ("transpose", "copy") or name.startswith(("transpose", "copy")) \
            else "elementwise/reductions"
      kinds[name] = kind
  return kinds


def trace_events(folder: str | Path) -> list[dict]:
  """The complete ('X') events of the perfetto trace `jax.profiler.trace` wrote under `folder`."""
  files = sorted(Path(folder).rglob("perfetto_trace.json.gz"))
  if not files:
    raise UserError(f"the profiler wrote no perfetto trace under {folder} (this jax has no perfetto export)")
  data = json.loads(gzip.open(files[-1]).read())
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X"]


def _span(event: dict) -> tuple[float, float]:
  """(start, duration) of a trace event, in microseconds."""
  return float(event.get("ts", 0.0)), float(event.get("dur", 0.0))


def _by_thread(events: list[dict]) -> dict:
  """The events of each thread (trace `tid`), in trace order: each device runs its ops on one thread."""
  threads = collections.defaultdict(list)
  for e in events:
    threads[e.get("tid")].append(e)
  return threads


def breakdown(events: list[dict], kinds: dict[str, str], steps: int, nested: bool = True) -> dict:
  """Thread milliseconds per step by kind, and the heaviest ops, from the trace's events.

  Only innermost op events count: a loop's event (a sampler's `lax.scan`) holds its body's ops, which count
  themselves. `nested=False` (a GPU's kernels, which do not nest, though one may start a few ns before the
  last one's recorded end) counts every event. The time a collective spends in a rendezvous, waiting for the
  other devices to arrive, moves from "collectives" to "waiting"."""
  per_kind: collections.Counter = collections.Counter()
  per_op: collections.Counter = collections.Counter()
  for thread in _by_thread(events).values():
    thread.sort(key=lambda e: (_span(e)[0], -_span(e)[1]))
    ops = [e for e in thread if str(e.get("name", "")) in kinds]
    collective_spans = []
    for e, after in zip(ops, ops[1:] + [None]):
      ts, dur = _span(e)
      if nested and after is not None and _span(after)[0] < ts + dur:  # it holds another op: count that one
        continue
      name = str(e["name"])
      per_kind[kinds[name]] += dur / 1000.0
      per_op[name] += dur / 1000.0
      if kinds[name] == "collectives":
        collective_spans.append((ts, ts + dur))
    for e in thread:
      ts, dur = _span(e)
      if e.get("name") == WAIT_EVENT and any(lo <= ts and ts + dur <= hi for lo, hi in collective_spans):
        per_kind["waiting"] += dur / 1000.0
        per_kind["collectives"] -= dur / 1000.0
  total = sum(per_kind.values())
  rows = [{"kind": k, "ms_per_step": per_kind[k] / steps, "share": per_kind[k] / total if total else 0.0}
          for k in KINDS]
  top = [{"op": op, "kind": kinds[op], "ms_per_step": ms / steps} for op, ms in per_op.most_common()]
  return {"kinds": rows, "thread_ms_per_step": total / steps, "top_ops": top}


def idle_between_ops(events: list[dict], kinds: dict[str, str], steps: int) -> dict:
  """Per step, the busy threads' time with no op running, between each one's first op and its last.

  Busy threads run at least half as many op events as the busiest: one per device. A thread that only
  runs the few host-side ops around a call (seeding, argument handling) would count its whole wait."""
  by_thread = {tid: [(ts, ts + dur) for ts, dur in map(_span, thread)]
               for tid, thread in _by_thread([e for e in events if str(e.get("name", "")) in kinds]).items()}
  most = max((len(v) for v in by_thread.values()), default=0)
  span = idle = 0.0
  threads = 0
  for intervals in by_thread.values():
    if len(intervals) * 2 < most:
      continue
    threads += 1
    intervals.sort()
    end = intervals[0][0]
    span += max(hi for _, hi in intervals) - intervals[0][0]
    for lo, hi in intervals:  # the union of the op events; what it leaves uncovered is idle
      idle += max(lo - end, 0.0)
      end = max(end, hi)
  return {"threads": threads, "span_ms_per_step": span / 1000.0 / steps, "idle_ms_per_step": idle / 1000.0 / steps,
          "share": idle / span if span else 0.0}


def _traced(fn, calls: int, kinds: dict[str, str]) -> tuple[dict, float]:
  """`fn` run `calls` times under the profiler: (breakdown per call, wall seconds per call)."""
  import jax

  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(calls):
        fn()
      wall = (time.perf_counter() - start) / calls
    traced = trace_events(folder)
    events, kinds = device_events(traced, kinds)
    on_device = events is not traced  # a GPU's kernels, which do not nest; a CPU trace comes back as it was
    result = breakdown(events, kinds, calls, nested=not on_device)
    result["idle"] = idle_between_ops(events, kinds, calls)
  if not result["thread_ms_per_step"]:
    raise UserError("the trace holds no events of the compiled program's ops (this jax's profiler does not "
                    "record XLA ops on this backend)")
  return result, wall


def _report(title: str, wall: float, result: dict, top: int, unit: str, log) -> None:
  log(f"{title}: {1000 * wall:.1f} ms wall per {unit} (traced), {result['thread_ms_per_step']:.1f} ms of op time "
      "over the devices")
  for row in result["kinds"]:
    log(f"  {row['kind']:24s} {row['ms_per_step']:9.1f} ms  {100 * row['share']:5.1f}%")
  idle = result["idle"]
  log(f"  idle between ops: {idle['idle_ms_per_step']:.1f} ms per {unit} over {idle['threads']} device threads, "
      f"{100 * idle['share']:.1f}% of their {idle['span_ms_per_step']:.1f} ms (dispatch between ops; host between "
      f"{unit}s)")
  log(f"  heaviest ops (ms per {unit}, summed over devices; a collective's time includes its waiting):")
  for row in result["top_ops"][:top]:
    log(f"    {row['ms_per_step']:8.1f}  {row['kind']:24s} {row['op']}")


def run(preset: str, stage: str, steps: int, batch: int | None, top: int, log=print) -> dict:
  """The train step of `stage` at `preset` sizes (`bench mfu`'s), profiled over `steps` steps."""
  import jax

  from unclip_jax.bench import mfu

  devices = jax.local_devices()
  config = mfu.stage_config(stage, preset, batch)
  runner = mfu.StepRunner(config, devices)
  # Run the very executable whose HLO is classified (its op names are the trace's), compiled once.
  runner.step = runner.step.lower(runner.state, runner.batch).compile()
  kinds = classify_hlo(runner.step.as_text())
  runner()  # warm up outside the trace
  runner()
  result, wall = _traced(runner, steps, kinds)
  _report(f"{stage} train step ({preset}, global batch {int(config.train.batch_size)}, {len(devices)} x "
          f"{devices[0].platform})", wall, result, top, "step", log)
  result["top_ops"] = result["top_ops"][:top]
  return {"benchmark": "profile", "program": "train", "preset": preset, "stage": stage, "devices": len(devices),
          "backend": jax.default_backend(), "jax": jax.__version__, "global_batch": int(config.train.batch_size),
          "wall_ms_per_step": 1000 * wall, **result}


def run_sample(checkpoint: str | None, batch: int, calls: int, top: int, log=print,
               random: str | None = None) -> dict:
  """Text → images on a pipeline folder (the packaged demo by default), or on random weights of a preset
  (`random`: "karlo" for Karlo's sizes, in bfloat16 on an accelerator), `batch` prompts per call, with the
  pipeline's own sampling settings, profiled over `calls` calls after one that compiles."""
  import jax

  from unclip_jax.pipeline import Pipeline
  from unclip_jax.pipeline.folder import default_pipeline

  if random:
    folder = f"random:{random}"
    dtype = "bfloat16" if jax.default_backend() != "cpu" else None
    pipe = Pipeline.random(random, dtype=dtype, log=lambda message: None)
  else:
    folder = checkpoint or default_pipeline()
    pipe = Pipeline.load(folder, log=lambda message: None)
  settings = pipe.settings()
  prompts = ["a red circle above a blue square"] * batch
  generate = lambda: pipe.generate(prompts, list(range(batch)), settings)  # noqa: E731
  generate()  # compiles
  kinds = {}
  for executable in pipe.runner.compiled.values():
    if hasattr(executable, "as_text"):
      kinds.update(classify_hlo(executable.as_text()))
  result, wall = _traced(generate, calls, kinds)
  steps = " → ".join(f"{s} {v.steps}" for s, v in settings.items())
  devices = jax.local_devices()
  _report(f"sampling {folder} ({steps}; {batch} prompts, {len(devices)} x {devices[0].platform})", wall, result,
          top, "call", log)
  result["top_ops"] = result["top_ops"][:top]
  return {"benchmark": "profile", "program": "sample", "checkpoint": str(folder), "batch": batch,
          "devices": len(devices), "backend": jax.default_backend(), "jax": jax.__version__,
          "settings": {k: v.to_dict() for k, v in settings.items()}, "wall_ms_per_call": 1000 * wall, **result}


def _parse(argv):
  from unclip_jax.bench.mfu import PRESETS, STAGES

  p = ArgumentParser(prog="python -m unclip_jax.bench profile", description=__doc__.splitlines()[0])
  p.add_argument("--program", default="train", choices=("train", "sample"),
                 help="a stage's train step, or text → images on a pipeline folder")
  p.add_argument("--preset", default="cpu", choices=tuple(PRESETS), help="train: the model sizes (bench mfu's)")
  p.add_argument("--stage", default="decoder", choices=STAGES, help="train: which stage")
  p.add_argument("--checkpoint", default=None, help="sample: a pipeline folder (default: the packaged demo)")
  p.add_argument("--random", default=None, choices=("tiny", "karlo"),
                 help="sample: a pipeline of random weights at these sizes instead of a folder")
  p.add_argument("--steps", type=int, default=3, help="traced train steps, or sampling calls, after warm-up")
  p.add_argument("--batch", type=int, default=None,
                 help="train: the global batch (default: the preset's); sample: prompts per call (default 4)")
  p.add_argument("--top", type=int, default=12, help="how many of the heaviest ops to list")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


def main(argv) -> int:
  args = _parse(list(argv))
  if args.steps < 1 or args.top < 0 or (args.batch is not None and args.batch < 1):
    raise UserError("--steps and --batch must be positive and --top at least 0")
  if args.random and (args.program != "sample" or args.checkpoint):
    raise UserError("--random is for --program sample, instead of --checkpoint")
  if args.program == "sample":
    report = run_sample(args.checkpoint, args.batch or 4, args.steps, args.top, random=args.random)
  else:
    report = run(args.preset, args.stage, args.steps, args.batch, args.top)
  if args.json:
    from unclip_jax.io import write_text_atomic

    write_text_atomic(args.json, json.dumps(report, indent=2))
  return 0
