"""Evaluation of unCLIP pipelines on the `shapes` world (`python -m unclip_jax.evaluate`).

Plain numpy / JAX functions, one idea per module:

  stats         Wilson score intervals for rates
  frechet       Fréchet distance (float64, eigh-based matrix square root) and KID
  manifold      k-NN precision / recall and the memorisation check
  retrieval     CLIP score, R-precision, top-1 retrieval
  detector      the strict rule-based shapes detector and GenEval-style caption checks
  prompts       evaluation prompt sets (task x seen / held-out) with their ground-truth renders
  features      the evaluator CNN (trained here, cached) whose features FD & co. are measured in
  clip_eval     the evaluator CLIP (trained apart from the generator's, cached) and a CLIP scorer
  images        resizing and framed grids
  context       options, the loaded pipeline, evaluators and the generated-image cache shared by the suites
  compositional / stage_attribution / fidelity / alignment / zeroshot_probe / prior_eval / guidance   the suites
  candidates    a suite outside `all`: every decoder candidate graded, and how well each rater picks among them
  report        JSON, the markdown table, grids and the guidance plot
"""

SUITES = ("compositional", "stages", "fd", "clip_score", "zeroshot", "prior", "guidance")  # what `all` runs
EXTRA_SUITES = ("candidates",)  # asked for by name only: K times the sampling of the compositional suite


def suite_runner(name: str):
  """The `run(ctx) -> dict` of a suite."""
  from unclip_jax.eval import (alignment, candidates, compositional, fidelity, guidance, prior_eval,
                               stage_attribution, zeroshot_probe)

  return {"compositional": compositional.run, "stages": stage_attribution.run, "fd": fidelity.run,
          "clip_score": alignment.run, "zeroshot": zeroshot_probe.run, "prior": prior_eval.run, "guidance": guidance.run,
          "candidates": candidates.run}[name]
