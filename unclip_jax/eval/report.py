"""Results out: one JSON, one markdown table (ready for the README), sample grids and the guidance plot.

Why one table: every suite's headline numbers side by side, seen vs held-out columns and the reference
each should be read against (real images, the real-vs-real floor, chance), so a README can quote it
as it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from unclip_jax.eval import prompts
from unclip_jax.io import write_text_atomic


def _p(prop: dict | None) -> str:
  if not prop:
    return ""
  if prop.get("n", 0) == 0 or math.isnan(prop.get("rate", float("nan"))):
    return "n/a"
  lo, hi = prop["ci95"]
  return f"{prop['rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _f(x, digits: int = 3) -> str:
  return "" if x is None else f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _signed(summary: dict) -> str:
  return f"{summary['mean']:+.3f} ± {summary['sem']:.3f}"


def _by_object(groups: dict) -> str:
  """{"orange circle": proportion, ...} → "orange circle 3/13, purple triangle 8/9"."""
  return ", ".join(f"{name} {p['k']}/{p['n']}" for name, p in groups.items())


def rows(results: dict) -> list[tuple[str, str, str, str, str]]:
  """(suite, metric, seen, held-out, reference) rows for every suite present in `results`."""
  out = []
  c = results.get("compositional")
  if c:
    for task, cells in c["tasks"].items():
      s, h = cells["seen"], cells["heldout"]
      out.append(("compositional", f"{task} accuracy", _p(s["accuracy"]), _p(h["accuracy"]),
                  f"real {_p(s['real_ceiling'])} / {_p(h['real_ceiling'])}"))
      if task == "single" and "by_object" in h:
        out.append(("compositional", "single, per held-out pair", "", _by_object(h["by_object"]),
                    "which unseen pairs are drawn"))
      if task == "position":
        out.append(("compositional", "position, dataset rule", _p(s["dataset_rule"]), _p(h["dataset_rule"]),
                    f"real {_p(s['real_ceiling_dataset_rule'])} / {_p(h['real_ceiling_dataset_rule'])}"))
      if task == "negation":
        out.append(("compositional", "negation: negated shape drawn", _p(s["negated_shape_drawn"]),
                    _p(h["negated_shape_drawn"]), "known failure: no negation in training captions"))
    seen, held = c["overall"]["seen"], c["overall"]["heldout"]
    averaged = seen.get("tasks", list(prompts.TASKS))  # results written before --tasks averaged every task
    drawing = [t for t in averaged if t != "negation"]
    if len(drawing) > 1:
      out.append(("compositional", f"mean over {', '.join(drawing)}", _f(seen["mean_over_tasks_without_negation"]),
                  _f(held["mean_over_tasks_without_negation"]), f"{c['num_per_cell']} prompts per cell"))
    if "negation" in averaged and len(averaged) > 1:
      out.append(("compositional", "mean over tasks, negation included", _f(seen["mean_over_tasks"]),
                  _f(held["mean_over_tasks"]), ""))
  st = results.get("stages")
  if st:
    for key, name in (("decoder_from_true_embedding", "decoder from the real image's CLIP embedding (no prior)"),
                      ("upsampler_from_true_image", "upsampler from the real low-res render (no prior or decoder)")):
      if key in st["skipped"]:
        out.append(("stages", f"{st['task']} accuracy, {name}: skipped", "", "", st["skipped"][key]))
      else:
        s, h = st["splits"]["seen"], st["splits"]["heldout"]
        out.append(("stages", f"{st['task']} accuracy, {name}", _p(s[key]), _p(h[key]),
                    f"real {_p(s['real_ceiling'])} / {_p(h['real_ceiling'])}"))
        if f"{key}_by_object" in h:
          out.append(("stages", f"{st['task']}, {name}, per held-out pair", "", _by_object(h[f"{key}_by_object"]),
                      "which unseen pairs are drawn"))
  f = results.get("fd")
  if f:
    g, fl = f["generated_vs_real"], f["real_vs_real_floor"]
    for key, name in (("fd", "FD (evaluator CNN)"), ("kid", "KID"), ("precision", "precision (k=3)"),
                      ("recall", "recall (k=3)")):
      out.append(("fd", name, "", _f(g[key]), f"real-vs-real {_f(fl[key])}"))
    m, mr = f["memorisation"], f["memorisation_real_reference"]
    out.append(("fd", f"memorisation: copy rate (NN below train's {m['quantile']:.0%} quantile)",
                _f(m["copy_rate"]), "",
                f"fresh real {_f(mr['copy_rate'])}"))
    out.append(("fd", "memorisation: NN distance / train NN distance", _f(m["ratio"]), "",
                f"fresh real {_f(mr['ratio'])}"))
  a = results.get("clip_score")
  if a:
    s, h = a["splits"]["seen"], a["splits"]["heldout"]
    out.append(("clip_score", "CLIP score (evaluator CLIP)", _f(s["generated"]["clip_score"]),
                _f(h["generated"]["clip_score"]),
                f"real {_f(s['real_ceiling']['clip_score'])} / {_f(h['real_ceiling']['clip_score'])}"))
    out.append(("clip_score", "R-precision among 100 (evaluator CLIP)", _p(s["generated"]["r_precision"]),
                _p(h["generated"]["r_precision"]),
                f"real {_p(s['real_ceiling']['r_precision'])} / {_p(h['real_ceiling']['r_precision'])}"))
    out.append(("clip_score", "R-precision, generator's own CLIP (biased)",
                _p(s["generator_clip_generated"]["r_precision"]),
                _p(h["generator_clip_generated"]["r_precision"]),
                f"real {_p(s['generator_clip_real']['r_precision'])} / {_p(h['generator_clip_real']['r_precision'])}"))
  z = results.get("zeroshot")
  if z:
    for probe in ("colour", "shape", "colour_shape"):
      size = f" ({z['image_size']} px renders)" if "image_size" in z else ""
      out.append(("zeroshot", f"shapes {probe.replace('_', '+')}{size}", _p(z["shapes"]["seen"][probe]),
                  _p(z["shapes"]["heldout"][probe]), f"chance {z['shapes']['seen'][probe]['chance']:.2f}"))
    for probe in ("colour", "shape"):
      if probe in z.get("linear_probe", {}):
        r = z["linear_probe"][probe]
        out.append(("zeroshot", f"{probe} read by a linear probe fit on seen pairs", _p(r["seen"]), _p(r["heldout"]),
                    "image embedding; what a decoder's rules from seen pairs can read"))
    for task, r in z.get("word_order", {}).items():
      if "seen" in r and "heldout" in r:
        what = {"relation": "with the relation flipped", "color": "with the colours swapped",
                "count": "with another count"}[r["perturbation"]]
        out.append(("zeroshot", f"{task} scenes: caption over the same words {what}", _p(r["seen"]),
                    _p(r["heldout"]), f"chance {r['seen']['chance']:.2f}; word order (hard negatives)"))
    placement = z.get("placement", {})
    if "single_quadrant" in placement:
      r = placement["single_quadrant"]
      r2 = " / ".join(f"{r['centre_r2'][s][0]:.2f}, {r['centre_r2'][s][1]:.2f}" for s in ("seen", "heldout"))
      out.append(("zeroshot", "single object's quadrant read by a linear probe", _p(r["seen"]), _p(r["heldout"]),
                  f"chance {r['chance']:.2f}; centre R² (x, y) {r2}; image embedding: where it is"))
    if "position_side" in placement:
      r = placement["position_side"]
      out.append(("zeroshot", "position scenes: the first object's side (by colour, shape) read by a linear probe",
                  _p(r["seen"]), _p(r["heldout"]),
                  f"chance {r['chance']:.2f}; along the relation's axis; the relation without word order"))
    if "shapes_resized_from_64px" in z:
      for probe in ("colour", "shape"):
        r = z["shapes_resized_from_64px"]
        out.append(("zeroshot", f"shapes {probe} (64 px renders resized)", _p(r["seen"][probe]),
                    _p(r["heldout"][probe]), "a resolution shift the CLIP never trained on"))
    if "fashion_mnist" in z:
      out.append(("zeroshot", "fashion_mnist test (10 classes)", _p(z["fashion_mnist"]), "",
                  f"chance {z['fashion_mnist']['chance']:.2f}"))
    if "emoji_heldout_style" in z:
      out.append(("zeroshot", "emoji style of held-out pairs (4 styles)", "", _p(z["emoji_heldout_style"]),
                  f"chance {z['emoji_heldout_style']['chance']:.2f}"))
    for name, why in z.get("skipped", {}).items():
      out.append(("zeroshot", f"{name}: skipped", "", "", why[:80]))
  p = results.get("prior")
  if p:
    s, h = p["splits"]["seen"], p["splits"]["heldout"]
    for key, name in (("cos_prior_vs_image", "cos(prior sample, image embedding)"),
                      ("reference_another_render", "  reference: another real render of the caption"),
                      ("cos_prior_vs_prior", "cos(prior sample, another seed's sample): spread, vs the reference"),
                      ("baseline_text_embedding", "  baseline: caption's text embedding"),
                      ("baseline_mean_image_embedding", "  baseline: mean image embedding"),
                      ("baseline_unrelated_caption_prior", "  baseline: unrelated caption's prior sample")):
      if key in s:  # results written before the reference existed lack it
        out.append(("prior", name, f"{s[key]['mean']:.3f}", f"{h[key]['mean']:.3f}", ""))
    for key, name in (("prior_minus_another_render_paired", "prior sample minus reference, per caption"),
                      ("prior_minus_text_paired", "prior sample minus text embedding, per caption")):
      if key in s:
        out.append(("prior", name, _signed(s[key]), _signed(h[key]), "mean ± standard error"))
    for key, name in (("retrieval_top1_prior", "retrieval top-1 by prior sample"),
                      ("retrieval_top1_text", "  baseline: by text embedding")):
      out.append(("prior", name, _f(s[key]["top1"]), _f(h[key]["top1"]), f"among {s[key]['pool']}, chance "
                  f"{1 / max(s[key]['pool'], 1):.2f}"))
  cd = results.get("candidates")
  if cd:
    out += _candidate_rows(cd)
  gd = results.get("guidance")
  if gd:
    for pt in gd["points"]:
      out.append(("guidance", f"prior {pt['prior_guidance']:g}, decoder {pt['decoder_guidance']:g}: "
                  "FD / accuracy / CLIP score",
                  f"{_f(pt['fd'])} / {pt['compositional_accuracy']['rate']:.2f} / {_f(pt['clip_score'])}", "",
                  f"real: accuracy {gd['real_compositional_accuracy']['rate']:.2f}, "
                  f"CLIP score {_f(gd['real_clip_score'])}"))
  return out


def _candidate_rows(cd: dict) -> list[tuple[str, str, str, str, str]]:
  k, used = cd["k"], cd["used_by_pipeline"]
  out = []
  for task, cells in cd["tasks"].items():
    s, h = cells["seen"], cells["heldout"]
    out.append(("candidates", f"{task}: some candidate right", _p(s["any_right"]), _p(h["any_right"]),
                f"of {k}; candidate 0 (no reranking) {_p(s['first_right'])} / {_p(h['first_right'])}"))
    for name in cd["raters"]:
      rs, rh = s["raters"][name], h["raters"][name]
      auc = " / ".join("n/a" if r["auc"] is None else f"{r['auc']:.2f}" for r in (rs, rh))
      out.append(("candidates", f"{task}: {name}{' (used)' if name == used else ''} picks a right one",
                  _p(rs["pick"]), _p(rh["pick"]), f"AUC {auc}; random pick {s['random_pick']:.2f} / "
                  f"{h['random_pick']:.2f}"))
  seen, held = cd["overall"]["seen"], cd["overall"]["heldout"]
  out.append(("candidates", f"mean over {', '.join(cd['tasks'])}: some candidate right", _f(seen["any_right"]),
              _f(held["any_right"]), f"{cd['num_per_cell']} prompts per cell, {k} candidates each"))
  for name in cd["raters"]:
    out.append(("candidates", f"mean: {name} picks a right one", _f(seen["pick"][name]), _f(held["pick"][name]),
                f"candidate 0 {_f(seen['first_right'])} / {_f(held['first_right'])}"))
  return out


def markdown(results: dict) -> str:
  lines = ["| suite | metric | seen | held-out | reference |", "|---|---|---|---|---|"]
  lines += [f"| {' | '.join(r)} |" for r in rows(results)]
  return "\n".join(lines) + "\n"


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, (np.bool_,)):
    return bool(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, Path):
    return str(o)
  raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write(results: dict, out: str | Path, meta: dict) -> dict[str, Path]:
  """Writes results.json, results.md, the suites' grids and the guidance plot; returns the paths."""
  from unclip_jax.eval.guidance import plot
  from unclip_jax.eval.images import framed_grid
  from unclip_jax.images import save_png

  out = Path(out)
  paths = {}
  grids = {f"{suite}_{name}": grid for suite in ("compositional", "stages", "candidates")
           for name, grid in results.get(suite, {}).pop("_grids", {}).items()}
  for name, (images, ok, captions, *layout) in grids.items():  # (images, passed, captions[, framed_grid options])
    path = out / "grids" / f"{name}.png"
    save_png(path, framed_grid(images, ok, **(layout[0] if layout else {})))
    listing = "".join(f"{'PASS' if o else 'fail'}  {c}\n" for o, c in zip(ok, captions))
    write_text_atomic(path.with_suffix(".txt"), listing)
    paths[f"grid_{name}"] = path
  if "guidance" in results:
    why = plot(results["guidance"], out / "guidance.png")
    if why:
      results["guidance"]["plot"] = why
    else:
      paths["guidance_plot"] = out / "guidance.png"
  write_text_atomic(out / "results.json", json.dumps({"meta": meta, **results}, indent=2, default=_json_default))
  write_text_atomic(out / "results.md", markdown(results))
  paths["json"], paths["markdown"] = out / "results.json", out / "results.md"
  return paths


BEGIN, END = "<!-- evaluate:results -->", "<!-- /evaluate:results -->"


def replace_block(path: str | Path, text: str) -> Path:
  """Replaces what lies between the BEGIN and END lines of the text file `path` with `text` (atomically);
  a file without both markers is a UserError, so nothing else is ever overwritten."""
  from unclip_jax.errors import UserError

  path = Path(path)
  try:
    lines = path.read_text().splitlines(keepends=True)
  except OSError as e:
    raise UserError(f"--update-readme {path}: {e.strerror or e}") from None
  marks = [i for i, line in enumerate(lines) if line.strip() in (BEGIN, END)]
  if len(marks) != 2 or lines[marks[0]].strip() != BEGIN:
    raise UserError(f"--update-readme {path} needs one line {BEGIN!r} followed by one line {END!r}")
  body = text if text.endswith("\n") else text + "\n"
  return write_text_atomic(path, "".join(lines[:marks[0] + 1]) + body + "".join(lines[marks[1]:]))
