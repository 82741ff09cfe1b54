"""How each diffusion stage is sampled: the settings, their checks, and their one translation into
`diffusion.sample` arguments (used by the pipeline and the trainers' sample grids alike)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from unclip_jax.errors import UserError

DIFFUSION_STAGES = ("prior", "decoder", "sr_64_256", "sr_256_1024")
MAX_STEPS = 1000  # a respaced process can keep at most the training steps
SAMPLING_FIELDS = ("steps", "sampler", "eta", "guidance_scale", "clip_x0", "dynamic_threshold", "candidates",
                   "rate_upsampled")
MAX_CANDIDATES = 64


@dataclasses.dataclass(frozen=True)
class StageSampling:
  """How one diffusion stage is sampled (the `sample` sub-config of its diffusion config).

  `candidates`: samples drawn per output, of which the one nearest the caption in the pipeline's CLIP space
  is kept. The prior keeps the largest z_i·z_t (unCLIP's); the decoder keeps the image whose CLIP image
  embedding has the largest cosine with the caption's text embedding (CLIP reranking, as DALL·E did), or
  with the conditioning image embedding where there is no caption (variations). Upsamplers draw one.

  `rate_upsampled` (decoder only): the candidates are taken through the upsamplers before they are rated, so
  the rater sees what the pipeline outputs, not the decoder's small image (K times the upsampling work). For a
  rater trained at the output size: the demo's 64 px `rerank_clip` (docs/demo.md).
  """
  steps: str = "25"
  sampler: str = "ddpm"
  eta: float = 0.0
  guidance_scale: float = 1.0
  clip_x0: float = 1.0
  dynamic_threshold: float = 0.0
  candidates: int = 1
  rate_upsampled: bool = False

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> StageSampling:
    keep = lambda v: v  # noqa: E731  (checked by check_sampling)
    kinds = {"steps": str, "sampler": str, "candidates": keep, "rate_upsampled": keep}
    return cls(**{k: kinds.get(k, float)(d[k]) for k in SAMPLING_FIELDS if k in d})

  def compiled_key(self) -> tuple:
    """What of these settings is baked into a compiled program (the guidance scale is an argument)."""
    return (self.steps, self.sampler, self.eta, self.clip_x0, self.dynamic_threshold, self.candidates,
            self.rate_upsampled)


def sample_kwargs(s: StageSampling) -> dict:
  """The keyword arguments of `diffusion.sample` these settings stand for (0 turns a clamp off)."""
  return {"sampler": s.sampler, "eta": s.eta, "clip_x0": s.clip_x0 or None,
          "dynamic_threshold": s.dynamic_threshold or None}


def check_steps(steps: Any, what: str) -> str:
  """A step count (int or respacing string such as "25" / "ddim50") → the respacing string; UserError if bad."""
  text = str(steps).strip()
  digits = text[4:] if text.startswith("ddim") else text
  if "," not in digits and not text.startswith("fast"):
    try:
      n = int(digits)
    except ValueError:
      raise UserError(f"{what} must be a whole number of steps (or 'ddimN'), got {steps!r}") from None
    if not 1 <= n <= MAX_STEPS:
      raise UserError(f"{what} must lie between 1 and {MAX_STEPS} (the training steps), got {n}")
  return text


def check_scale(value: Any, what: str) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise UserError(f"{what} must be a number, got {value!r}") from None
  if not math.isfinite(v):
    raise UserError(f"{what} must be a finite number, got {value!r}")
  return v


def check_sampling(s: StageSampling, stage: str) -> StageSampling:
  """Validates a stage's settings (UserError naming the stage) and returns them normalised."""
  steps = check_steps(s.steps, f"{stage} steps")
  if s.sampler not in ("ddpm", "ddim"):
    raise UserError(f"{stage} sampler must be 'ddpm' or 'ddim', got {s.sampler!r}")
  guidance = check_scale(s.guidance_scale, f"{stage} guidance scale")
  eta = check_scale(s.eta, f"{stage} DDIM eta")
  if eta < 0:
    raise UserError(f"{stage} DDIM eta must be >= 0, got {eta}")
  clip = check_scale(s.clip_x0, f"{stage} clip_x0")
  dyn = check_scale(s.dynamic_threshold, f"{stage} dynamic threshold")
  if clip < 0 or not 0 <= dyn < 1:
    raise UserError(f"{stage}: clip_x0 must be >= 0 and dynamic_threshold in [0, 1)")
  return StageSampling(steps, s.sampler, eta, guidance, clip, dyn, check_candidates(s.candidates, stage),
                       check_rate_upsampled(s.rate_upsampled, stage))


def check_candidates(value: Any, stage: str) -> int:
  """A stage's candidate count (an int in [1, MAX_CANDIDATES]; upsamplers draw one); UserError if bad."""
  try:
    n = int(value)
  except (TypeError, ValueError):
    raise UserError(f"{stage} candidates must be a whole number, got {value!r}") from None
  if n != value and not (isinstance(value, str) and value.strip() == str(n)):
    raise UserError(f"{stage} candidates must be a whole number, got {value!r}")
  if not 1 <= n <= MAX_CANDIDATES:
    raise UserError(f"{stage} candidates must lie between 1 and {MAX_CANDIDATES}, got {n}")
  if n > 1 and stage not in ("prior", "decoder"):
    raise UserError(f"{stage}: only the prior and the decoder choose among candidates; set {stage} candidates to 1")
  return n


def check_rate_upsampled(value: Any, stage: str) -> bool:
  """The decoder's `rate_upsampled` flag (true or false; other stages false); UserError if bad."""
  if not isinstance(value, bool):
    raise UserError(f"{stage} rate_upsampled must be true or false, got {value!r}")
  if value and stage != "decoder":
    raise UserError(f"{stage}: only the decoder's candidates are rated after upsampling; set {stage} "
                    "rate_upsampled to false")
  return value


def apply_overrides(defaults: Mapping[str, StageSampling],
                    overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, StageSampling]:
  """`defaults` with `overrides` ({stage: {field: value}}, None values ignored) applied and checked."""
  out = {}
  for stage, s in defaults.items():
    o = {k: v for k, v in (overrides or {}).get(stage, {}).items() if v is not None}
    out[stage] = check_sampling(dataclasses.replace(s, **o), stage)
  return out


def inversion_settings(decoder: StageSampling) -> StageSampling:
  """The decoder settings DDIM inversion runs backwards: deterministic DDIM (eta 0) with no x0 clamp (a
  clamp is not invertible, so with it the latent would not lead back to the image). The step count is
  left to `applications.inversion_steps`."""
  return dataclasses.replace(decoder, sampler="ddim", eta=0.0, clip_x0=0.0, dynamic_threshold=0.0)
