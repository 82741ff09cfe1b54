"""`Pipeline`: a loaded unCLIP pipeline, its weights on the local devices, and its compiled programs.

Sampling runs text → tokens → CLIP text tower → prior (guided against the empty caption, N candidates,
the best z_i·z_t kept) → decoder (guided; the unconditional half uses the learned CFG image embedding and
the empty caption, as Karlo and diffusers do) → upsamplers → uint8 images. A whole call (`generate`, or
`decode_embeddings` for the applications) is one program built by `programs.whole_program`, compiled
once per (batch rows, settings), the guidance scales being arguments. The stage methods (`encode_text`,
`sample_prior`, `decode`, `upsample`, `invert`) jit the same pieces one at a time.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from unclip_jax import diffusion as D
from unclip_jax.errors import UserError
from unclip_jax.models import clip as clip_model
from unclip_jax.models import clip_encoder, registry
from unclip_jax.models.layers import inference_weights
from unclip_jax.models.tokenizer import Tokenizer
from unclip_jax.pipeline import programs
from unclip_jax.pipeline.folder import STAGE_KINDS, load_stage_tree, read_pipeline
from unclip_jax.pipeline.programs import SRStage, TextEncoding
from unclip_jax.pipeline.random_weights import default_sampling, random_params, random_stage_configs
from unclip_jax.pipeline.runner import ShardedRunner
from unclip_jax.pipeline.settings import DIFFUSION_STAGES, StageSampling, apply_overrides

UPSAMPLERS = ("sr_64_256", "sr_256_1024")


def rerank_model(config: dict, clip_config: clip_model.CLIPConfig, name: str):
  """(module, config) of a pipeline's `rerank_clip` stage, a CLIP that only rates decoder candidates against
  their caption. It reads the pipeline's token ids, so its context length must be the pipeline CLIP's."""
  rc = clip_model.CLIPConfig.from_dict(config)
  if not rc.image_tower:
    raise UserError(f"{name or 'this pipeline'}: its rerank_clip stage is a text encoder only; rating decoder "
                    "candidates needs an image tower")
  if rc.context_length != clip_config.context_length:
    raise UserError(f"{name or 'this pipeline'}: its rerank_clip stage reads {rc.context_length} tokens, the "
                    f"pipeline's CLIP {clip_config.context_length}; train the reranker with the same context")
  rc = rc.replace(dtype=clip_config.dtype)
  return clip_model.CLIP(rc), rc


def need_image_tower(pipe, what: str) -> None:
  """A one-line error where `what` needs the pipeline CLIP's image tower and its CLIP is a text encoder only."""
  if not pipe.clip_config.image_tower:
    raise UserError(f"{pipe.name or 'this pipeline'}: its CLIP is a text encoder only; {what} need an image "
                    "encoder (for Karlo: python -m unclip_jax.convert karlo ... --variations "
                    "KARLO_IMAGE_VARIATIONS_DIR)")


def candidate_scorer(pipe, s: StageSampling, rerank: bool):
  """What rates a pipeline's decoder candidates: its `rerank_clip` stage's towers, or its CLIP's (None for K = 1)."""
  if rerank:
    return programs.clip_scorer(pipe.rerank_clip, pipe.rerank_config)
  if s.candidates > 1:
    need_image_tower(pipe, "decoder candidates (CLIP reranking)")
    return programs.clip_scorer(pipe.clip, pipe.clip_config)
  return None


def rates_upsampled(pipe, s: StageSampling) -> bool:
  """Whether decoder candidates are rated after the upsamplers (`rate_upsampled`; without upsamplers the output is
  the decoder's own image, rated as it is)."""
  return s.candidates > 1 and s.rate_upsampled and bool(pipe.srs)


class Component(NamedTuple):
  """One stage of a pipeline: its checkpoint kind, its stage.json `config`, its parameter tree."""
  kind: str
  config: dict
  params: Any


class Pipeline:
  """Models, parameters on device, default settings and compiled programs of one pipeline.

  Methods take host arrays with any batch size B and return host arrays of B rows (see ShardedRunner).
  The attributes holding modules and weights (`prior`, `prior_vars`, `decoder`, `decoder_params`,
  `image_size`, `srs`) are read when a program is built, so tests may swap in other weights. With a
  `dtype` such as bfloat16 the kernels are held in it (`layers.inference_weights`).
  """

  def __init__(self, components: dict[str, Component], sampling: dict[str, StageSampling], *, name: str = "",
               dtype: str | None = None, log: Callable[[str], None] = print, weights: dict | None = None):
    self.name, self.dtype, self.sampling = name, dtype, sampling
    self.weights = weights or {}
    self.runner = ShardedRunner(log)
    cfg = clip_model.CLIPConfig.from_dict(components["clip"].config)
    self.clip_config = cfg.replace(dtype=dtype) if dtype else cfg
    self.clip = clip_model.CLIP(self.clip_config)
    self.tokenizer = Tokenizer(context_length=cfg.context_length)
    self.clip_params = self._put(components["clip"].params)
    self.prior = registry.build_model("prior", components["prior"].config["model"], dtype=dtype, remat=False)
    self.prior_vars = self._put(components["prior"].params)
    if self.prior.embedding_dim != cfg.embed_dim or self.prior.num_embeddings != cfg.context_length:
      raise UserError(f"the prior ({self.prior.embedding_dim}-d, {self.prior.num_embeddings} tokens) does not fit "
                      f"the CLIP model ({cfg.embed_dim}-d, context {cfg.context_length})")
    dm = components["decoder"].config["model"]
    self.decoder = registry.build_model("decoder", dm, dtype=dtype, remat=False)
    self.decoder_params = self._put(components["decoder"].params)
    if dm["clip_embeddings_dim"] != cfg.embed_dim:
      raise UserError(f"the decoder takes {dm['clip_embeddings_dim']}-d CLIP embeddings, CLIP gives {cfg.embed_dim}")
    self.image_size = int(dm["image_size"])
    self.srs: list[SRStage] = []
    size = self.image_size
    for name in (n for n in UPSAMPLERS if n in components):
      m = components[name].config["model"]
      size_out = size * (int(m["image_size"]) // int(m["low_res_size"]))
      last = components.get(f"{name}_last")
      self.srs.append(SRStage(name, registry.build_model("upsampler", m, dtype=dtype, remat=False),
                              self._put(components[name].params),
                              self._put(last.params) if last else None, size, size_out))
      size = size_out
    self.output_size = size
    self.rerank_clip = self.rerank_config = self.rerank_params = None
    if "rerank_clip" in components:
      self.rerank_clip, self.rerank_config = rerank_model(components["rerank_clip"].config, self.clip_config, name)
      self.rerank_params = self._put(components["rerank_clip"].params)
    self._diffusion = {n: components[n].config.get("diffusion") for n in DIFFUSION_STAGES if n in components}
    self._uncond: TextEncoding | None = None

  @classmethod
  def load(cls, folder: str | os.PathLike, *, ema: bool = True, dtype: str | None = None,
           log: Callable[[str], None] = print) -> Pipeline:
    info = read_pipeline(folder)
    comps, weights = {}, {}
    for name, path in info["paths"].items():
      meta = info["stages"][name]
      tree, weights[name] = load_stage_tree(path, STAGE_KINDS[name], meta, ema=ema, log=log)
      comps[name] = Component(STAGE_KINDS[name], meta["config"], tree)
    try:
      return cls(comps, info["sampling"], name=str(folder), dtype=dtype, log=log, weights=weights)
    except (KeyError, TypeError) as e:
      raise UserError(f"{folder}: a stage config lacks a field the pipeline needs ({e})") from None

  @classmethod
  def random(cls, preset: str = "tiny", seed: int = 0, *, dtype: str | None = None,
             log: Callable[[str], None] = print) -> Pipeline:
    """A pipeline with random weights built in memory (benchmarks; nothing is written)."""
    configs = random_stage_configs(preset)
    comps = {s: Component(k, c, random_params(s, k, c, seed)) for s, (k, c) in configs.items()}
    return cls(comps, default_sampling(configs, preset), name=f"random:{preset}", dtype=dtype, log=log)

  # ------------------------------------------------------------------------------------ machinery

  def _put(self, tree):
    """A stage's weights onto every local device, kernels in the compute dtype (`inference_weights`)."""
    return self.runner.put(inference_weights(tree, self.dtype))

  @property
  def log(self) -> Callable[[str], None]:
    return self.runner.log

  @log.setter
  def log(self, fn: Callable[[str], None]) -> None:
    self.runner.log = fn

  @property
  def timings(self) -> list[dict]:
    return self.runner.timings

  @timings.setter
  def timings(self, value: list[dict]) -> None:
    self.runner.timings = value

  @property
  def n_devices(self) -> int:
    return self.runner.n_devices

  def padded_batch(self, n: int, batch: int | None = None) -> int:
    return self.runner.padded_batch(n, batch)

  def process(self, stage: str, steps: str):
    """The stage's training process (from its stage.json `diffusion`), respaced to `steps`."""
    cfg = self._diffusion.get(stage)
    cfg = ml_collections.ConfigDict(cfg) if cfg else D.diffusion_config(stage)
    try:
      return D.GaussianDiffusion.from_config(cfg).respace(steps)
    except (ValueError, KeyError) as e:
      raise UserError(f"{stage} steps {steps!r}: {e}") from None

  def settings(self, overrides: dict[str, dict] | None = None) -> dict[str, StageSampling]:
    """The pipeline's default per-stage settings with `overrides` ({stage: {field: value}}) applied."""
    return apply_overrides(self.sampling, overrides)

  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    return self.tokenizer(list(prompts), self.clip_config.context_length)

  def _text_piece(self):
    return clip_encoder.text_encoder(self.clip)

  def _prior_piece(self, s: StageSampling, candidates: int):
    return programs.prior_piece(self.prior, self.process("prior", s.steps), s, candidates)

  def _spread_candidates(self, s: StageSampling, rows: int) -> bool:
    """Whether a decoder program of `rows` rows divides each image's candidates over the devices."""
    return self.runner.spreads(rows, s.candidates > 1)

  def _decoder_piece(self, s: StageSampling, trajectory: bool, spread: bool = False, rerank: bool = False,
                     keep_all: bool = False):
    return programs.decoder_piece(self.decoder, self.process("decoder", s.steps), self.image_size, s, trajectory,
                                  None if keep_all else candidate_scorer(self, s, rerank),
                                  self.runner.batched if spread else None, keep_all)

  def _upsample_piece(self, settings: dict[str, StageSampling]):
    return programs.upsample_piece([(sr, settings[sr.name], self.process(sr.name, settings[sr.name].steps))
                                    for sr in self.srs])

  def _sr_weights(self) -> list:
    return [(sr.params, sr.last_params) for sr in self.srs]

  def _uncond_row(self) -> tuple:
    """The empty caption's encoding (one row), the unconditional branch of guidance."""
    if self._uncond is None:
      self._uncond = TextEncoding(*clip_encoder.encode_empty_caption(self.clip, self.clip_params,
                                                                     self.clip_config.context_length))
    u = self._uncond
    return (u.embeds, u.states, u.mask)

  # ----------------------------------------------------------------------------- one stage each

  def encode_text(self, prompts: Sequence[str], batch: int | None = None, rows: int | None = None) -> TextEncoding:
    out = self.runner.run_chunked("clip_text", (), self._text_piece(), (self.clip_params,),
                                  (self.tokenize(prompts),), len(prompts), batch, rows)
    return TextEncoding(*out)

  def uncond(self, n: int) -> TextEncoding:
    """The empty caption's encoding repeated n times."""
    return TextEncoding(*(np.repeat(a, n, axis=0) for a in self._uncond_row()))

  def encode_images(self, images: np.ndarray, batch: int | None = None) -> np.ndarray:
    """uint8 (B, S, S, 3) at the CLIP image size → (B, E) CLIP image embeddings (unnormalised)."""
    need_image_tower(self, "variations, interpolate and textdiff")
    fn = clip_encoder.image_encoder(self.clip, self.clip_config)
    return self.runner.run_chunked("clip_image", (), fn, (self.clip_params,), (images,), len(images), batch)

  def sample_prior(self, text: TextEncoding, keys: np.ndarray, settings: StageSampling, *, candidates: int = 1,
                   rows: int | None = None) -> np.ndarray:
    """CLIP image embeddings (B, E): per caption `candidates` prior samples, the best z_i·z_t kept."""
    piece = self._prior_piece(settings, candidates)
    fn = lambda v, scale, u, keys, *text: piece(v, scale, keys, text, u)  # noqa: E731
    return self.runner.run("prior", settings.compiled_key() + (candidates,), fn,
                           (self.prior_vars, np.float32(settings.guidance_scale), self._uncond_row()),
                           (keys, text.embeds, text.states, text.mask), len(keys), rows or self.padded_batch(len(keys)))

  def decoder_noise(self, keys: np.ndarray) -> np.ndarray:
    """The decoder's x_T for each image key (what `decode` uses when given no x_T)."""
    key = ("decoder_noise", self.image_size)
    if key not in self.runner.compiled:
      self.runner.compiled[key] = jax.jit(jax.vmap(lambda k: programs.decoder_noise(k, self.image_size)))
    return np.asarray(self.runner.compiled[key](keys))

  def decode(self, image_embeds: np.ndarray, text: TextEncoding, keys: np.ndarray, settings: StageSampling, *,
             x_T: np.ndarray | None = None, trajectory: bool = False, rows: int | None = None):
    """Decoder-size images in [-1, 1] (B, H, W, 3) from CLIP image embeddings and captions; with
    `trajectory` also the predicted x0 after every step (B, steps, H, W, 3). Candidates are rated by the
    pipeline's CLIP against `text`, here (a `rerank_clip` stage and `rate_upsampled` act in whole programs only)."""
    rows = rows or self.padded_batch(len(keys))
    spread = self._spread_candidates(settings, rows)
    piece = self._decoder_piece(settings, trajectory, spread)
    fn = lambda w, scale, u, keys, x_T, emb, *text: piece(w["decoder"], scale, keys, x_T, emb, text, u,  # noqa: E731
                                                          w["clip"], text[0])
    x_T = self.decoder_noise(keys) if x_T is None else x_T
    weights = {"decoder": self.decoder_params, "clip": self.clip_params if settings.candidates > 1 else None}
    return self.runner.run("decoder", settings.compiled_key() + (trajectory,), fn,
                           (weights, np.float32(settings.guidance_scale), self._uncond_row()),
                           (keys, x_T, np.asarray(image_embeds, np.float32), text.embeds, text.states, text.mask),
                           len(keys), rows, spread)

  def invert(self, images: np.ndarray, image_embeds: np.ndarray, settings: StageSampling, *,
             prompts: Sequence[str] | None = None, batch: int | None = None) -> np.ndarray:
    """DDIM inversion of decoder-size images in [-1, 1] under their CLIP image embeddings (and captions,
    default empty): the x_T that `decode_embeddings` with these `settings` (sampler "ddim", eta 0) turns
    back into the images. One program: text encoder + inversion scan."""
    if tuple(images.shape[1:]) != (self.image_size, self.image_size, 3):
      raise UserError(f"images to invert must be {self.image_size}x{self.image_size} RGB (the decoder's size), "
                      f"got shape {tuple(images.shape[1:])}")
    text_fn = self._text_piece()
    invert_fn = programs.invert_piece(self.decoder, self.process("decoder", settings.steps))

    def program(weights, scale, empty_tokens, images, image_embeds, tokens):
      return invert_fn(weights["decoder"], scale, images, image_embeds, text_fn(weights["clip"], tokens),
                       text_fn(weights["clip"], empty_tokens))
    n = len(images)
    tokens = self.tokenize(list(prompts) if prompts is not None else [""] * n)
    weights = {"clip": self.clip_params, "decoder": self.decoder_params}
    return self.runner.run_chunked(
        f"text → invert decoder {settings.steps}", settings.compiled_key(), program,
        (weights, np.float32(settings.guidance_scale), self.tokenize([""])),
        (np.asarray(images, np.float32), np.asarray(image_embeds, np.float32), tokens), n, batch)

  def upsample(self, images: np.ndarray, keys: np.ndarray, settings: dict[str, StageSampling], *,
               rows: int | None = None) -> np.ndarray:
    """Runs every upsampler stage on images in [-1, 1]; returns images in [-1, 1] at the output size."""
    key = tuple(settings[sr.name].compiled_key() + (sr.last_params is None,) for sr in self.srs)
    return self.runner.run("upsamplers", key, self._upsample_piece(settings), (self._sr_weights(),),
                           (keys, np.asarray(images, np.float32)), len(keys), rows or self.padded_batch(len(keys)))

  # --------------------------------------------------------------------- whole pipeline, one program

  def _run_program(self, settings, *, candidates: int, trajectory: bool, keys, tokens, image_embeds=None,
                   x_T=None, batch: int | None, rows: int | None, rank_by_text: bool = True) -> dict:
    from_text = image_embeds is None
    stages = ["prior"] * from_text + ["decoder"] + [sr.name for sr in self.srs]
    n = len(keys)
    rows = self.runner.rows(n, batch, rows)
    spread = self._spread_candidates(settings["decoder"], rows)
    # a rerank_clip stage rates candidates against captions only (an image embedding lives in the pipeline CLIP's space)
    rerank = settings["decoder"].candidates > 1 and rank_by_text and self.rerank_clip is not None
    late = rates_upsampled(self, settings["decoder"])
    program = programs.whole_program(
        self._text_piece(), self._prior_piece(settings["prior"], candidates) if from_text else None,
        self._decoder_piece(settings["decoder"], trajectory, spread, rerank, keep_all=late),
        self._upsample_piece(settings), trajectory=trajectory, given_noise=x_T is not None, rank_by_text=rank_by_text,
        rerank_text_fn=clip_encoder.text_encoder(self.rerank_clip) if rerank else None,
        rate_upsampled=candidate_scorer(self, settings["decoder"], rerank) if late else None,
        spread=self.runner.batched if late and spread else None)
    weights = {"clip": self.clip_params, "prior": self.prior_vars if from_text else None,
               "decoder": self.decoder_params, "sr": self._sr_weights(),
               "rerank": self.rerank_params if rerank else None}
    scales = {s: np.float32(settings[s].guidance_scale) for s in ("prior", "decoder")}
    batched = (keys, tokens) + (() if from_text else (np.asarray(image_embeds, np.float32),)) + (
        () if x_T is None else (np.asarray(x_T, np.float32),))
    key = (tuple((st,) + settings[st].compiled_key() for st in stages), candidates, trajectory, from_text,
           x_T is not None, rank_by_text, rerank, tuple(sr.last_params is None for sr in self.srs))
    label = " → ".join(["text"] + [f"{st} {settings[st].steps}" for st in stages])
    result = self.runner.run_chunked(label, key, program, (weights, scales, self.tokenize([""])), batched, n,
                                     batch, rows, spread)
    result["rows"] = rows
    return result

  def generate(self, prompts: Sequence[str], seeds: Sequence[int], settings: dict[str, StageSampling], *,
               candidates: int | None = None, batch: int | None = None, trajectory: bool = False,
               rows: int | None = None) -> dict:
    """Text → images, each batch of `batch` prompts one compiled program. Returns {"images": uint8
    (B, S, S, 3), "image_embeds", "small" (decoder output in [-1, 1]), "trajectory" (decoder predicted x0
    per step, if asked), "rows" (compiled batch)}. `candidates` (prior samples per caption) defaults to the
    prior settings'; the decoder's come from its settings."""
    prompts = [str(p) for p in prompts]
    if not prompts or len(prompts) != len(seeds):
      raise UserError("give one seed per prompt (and at least one prompt)")
    if any(not p.strip() for p in prompts):
      raise UserError("a prompt is empty; give some text to draw")
    for p in dict.fromkeys(prompts):
      if len(self.tokenizer.encode(p)) + 2 > self.clip_config.context_length:
        self.log(f"warning: the prompt {p[:40]!r}... is longer than CLIP's {self.clip_config.context_length} "
                 "tokens and was truncated")
    candidates = settings["prior"].candidates if candidates is None else candidates
    return self._run_program(settings, candidates=candidates, trajectory=trajectory, keys=programs.image_keys(seeds),
                             tokens=self.tokenize(prompts), batch=batch, rows=rows)

  def decode_embeddings(self, image_embeds: np.ndarray, seeds: Sequence[int], settings: dict[str, StageSampling], *,
                        prompts: Sequence[str] | None = None, x_T: np.ndarray | None = None,
                        batch: int | None = None, trajectory: bool = False) -> dict:
    """CLIP image embeddings → images (the applications), one compiled program per batch (text encoder,
    decoder, upsamplers). Captions default to the empty one. Decoder candidates are rated against the
    captions where given, else against the image embeddings; a given x_T (interpolations and text diffs keep
    the noise fixed across a row) draws one image per row."""
    n = len(image_embeds)
    tokens = self.tokenize(list(prompts) if prompts is not None else [""] * n)
    if x_T is not None:
      settings = {**settings, "decoder": dataclasses.replace(settings["decoder"], candidates=1)}
    return self._run_program(settings, candidates=1, trajectory=trajectory, keys=programs.image_keys(seeds),
                             tokens=tokens, image_embeds=image_embeds, x_T=x_T, batch=batch, rows=None,
                             rank_by_text=prompts is not None)
