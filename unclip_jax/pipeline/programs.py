"""The traced pieces of sampling, as free functions of modules, processes and settings.

Each `*_piece` returns a pure function of device arrays. A stage method of `Pipeline` jits one piece; a
whole call (`whole_program`) composes them into one program: text encoder → prior → decoder →
upsamplers → uint8, each diffusion stage one `diffusion.sample` (`lax.scan`), nothing returning to the
host between stages.

Every image has its own key: all its noise comes from `PRNGKey(seed)` folded per stage (the `*_KEY`
streams), so an image does not depend on which other images share its batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import diffusion as D
from unclip_jax.diffusion.inversion import ddim_invert
from unclip_jax.errors import UserError
from unclip_jax.models import clip_encoder
from unclip_jax.models.prior import post_process_latents
from unclip_jax.pipeline.settings import MAX_CANDIDATES, StageSampling, sample_kwargs

# Per-image sub-keys: fold_in(image key, STREAM)
PRIOR_KEY, DECODER_KEY, DECODER_NOISE_KEY, SR_KEY = 0, 1, 2, 3
# The decoder's candidate k > 0 of an image uses fold_in(image key, DECODER_CANDIDATE_KEY + k) as its image key;
# candidate 0 is the image key itself, so it is the image drawn without candidates.
DECODER_CANDIDATE_KEY = 1000


@dataclasses.dataclass
class TextEncoding:
  """CLIP text encodings of a batch: pooled embeds (B, E), per-token states (B, L, W), mask (B, L)."""
  embeds: np.ndarray
  states: np.ndarray
  mask: np.ndarray

  def take(self, idx) -> TextEncoding:
    return TextEncoding(self.embeds[idx], self.states[idx], self.mask[idx])


@dataclasses.dataclass
class SRStage:
  """One upsampler: its module and weights, Karlo's `_last` weights for the final step (or None), sizes."""
  name: str
  model: Any
  params: Any
  last_params: Any
  low_res: int
  size: int


def image_keys(seeds: Sequence[int]) -> np.ndarray:
  """Per-image PRNG keys (uint32 (B, 2)): all of an image's noise derives from its own seed."""
  for s in seeds:
    if not 0 <= int(s) < 2 ** 32:
      raise UserError(f"seed {s} is out of range; use 0 <= seed < 2**32")
  return np.stack([np.asarray(jax.random.PRNGKey(int(s))) for s in seeds]).astype(np.uint32)


def uint8_images(x: jax.Array) -> jax.Array:
  """Traced twin of `images.to_uint8`: [-1, 1] → uint8, round to nearest."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
  """(n_out, n_in) weights of torch's antialiased bicubic resize (F.interpolate(mode="bicubic",
  antialias=True), what diffusers' unCLIP pipeline calls): Keys' kernel with a = -0.5 (PIL's), a window
  cut at the borders and renormalised, stretched by the scale when downsampling."""
  def w(x):
    x = abs(x)
    if x < 1:
      return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
      return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0
  scale = n_in / n_out
  support = 2.0 * max(scale, 1.0)
  inv = 1.0 / max(scale, 1.0)
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    ws = np.array([w((j - center + 0.5) * inv) for j in range(lo, hi)])
    m[i, lo:hi] = ws / ws.sum()
  return m.astype(np.float32)


def upsample_bicubic(x: jax.Array, size: int) -> jax.Array:
  """NHWC bicubic resize to (size, size) exactly as diffusers' unCLIP pipeline does it (see bicubic_matrix)."""
  mh = jnp.asarray(bicubic_matrix(x.shape[1], size))
  mw = jnp.asarray(bicubic_matrix(x.shape[2], size))
  x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=jax.lax.Precision.HIGHEST)


def decoder_branches(uncond_row, img, emb, states, mask):
  """The decoder's (cond, uncond) for one image: both see the CLIP image embedding; the unconditional
  branch gets the empty caption and the flag that swaps in the learned CFG embedding (Karlo, diffusers)."""
  e = lambda a: a[None]  # noqa: E731
  cond = (e(img), e(emb), e(states), e(mask), jnp.zeros((1,), bool))
  uncond = (e(img), *uncond_row, jnp.ones((1,), bool))
  return cond, uncond


def prior_piece(prior, process, s: StageSampling, candidates: int) -> Callable:
  """(variables, scale, keys (B, 2), text (B rows), uncond (1 row)) → CLIP image embeddings (B, E):
  per caption `candidates` prior samples, the one with the highest z_i·z_t kept."""
  if not 1 <= candidates <= MAX_CANDIDATES:
    raise UserError(f"prior candidates must lie between 1 and {MAX_CANDIDATES}, got {candidates}")
  d = prior.embedding_dim

  def one(variables, scale, uncond_row, key, emb, states, mask):
    tile = lambda a: jnp.broadcast_to(a[None], (candidates,) + a.shape)  # noqa: E731
    cond = (tile(emb), tile(states), tile(mask))
    uncond = tuple(tile(a[0]) for a in uncond_row)
    model_fn = lambda x, t, c: prior.apply(variables, x, t, *c)  # noqa: E731
    x = D.sample(process, model_fn, (candidates, d), jax.random.fold_in(key, PRIOR_KEY), cond=cond, uncond=uncond,
                 guidance_scale=scale, **sample_kwargs(s))
    z = post_process_latents(variables["stats"], x)
    return z[jnp.argmax(z @ emb)]

  def piece(variables, scale, keys, text, uncond_row):
    return jax.vmap(lambda *a: one(variables, scale, uncond_row, *a))(keys, *text)
  return piece


def decoder_noise(key, size: int) -> jax.Array:
  """The decoder's x_T (size, size, 3) for one image key."""
  return jax.random.normal(jax.random.fold_in(key, DECODER_NOISE_KEY), (size, size, 3))


def decoder_piece(decoder, process, size: int, s: StageSampling, trajectory: bool,
                  scorer: Callable | None = None, spread: jax.sharding.Sharding | None = None,
                  keep_all: bool = False) -> Callable:
  """(params, scale, keys, x_T or None, image embeds (B, E), text (B rows), uncond (1 row)[, clip params,
  targets (B, E)]) → images in [-1, 1] (B, H, W, 3), and with `trajectory` the predicted x0 after every step
  (B, steps, H, W, 3). Without x_T the noise comes from each image's key (`decoder_noise`).

  With `s.candidates` = K > 1 each image is drawn K times (candidate 0 from the image's own key and x_T, the
  others from `candidate_keys`) and the one `scorer(clip params, images (K, H, W, 3), target (E,))` rates
  highest against the row's target is kept (`clip_scorer`: CLIP reranking). `spread` (a sharding of the
  devices' batch axis) divides the image's candidates over the devices, for a program of one image
  (`ShardedRunner.run(spread=True)`): the packaged demo's one image with 8 candidates, 9.7 s on one of the 2
  CPU devices, 6.3-7.5 s spread over both, the same image. With `keep_all` every candidate is returned
  ((B, K, H, W, 3), trajectories (B, K, steps, H, W, 3)) for a later stage to rate (`rate_upsampled`)."""
  k = s.candidates
  if k > 1 and scorer is None and not keep_all:
    raise ValueError("decoder candidates need a scorer")

  def one(params, scale, uncond_row, key, noise, img, emb, states, mask):
    cond, uncond = decoder_branches(uncond_row, img, emb, states, mask)
    model_fn = lambda x, t, c: decoder.apply({"params": params}, x, t, *c)  # noqa: E731
    out = D.sample(process, model_fn, (1, size, size, 3), jax.random.fold_in(key, DECODER_KEY), cond=cond,
                   uncond=uncond, guidance_scale=scale, x_T=noise[None], return_trajectory=trajectory,
                   **sample_kwargs(s))
    if trajectory:
      x, traj = out
      return jnp.clip(x[0], -1, 1), traj.pred_x0[:, 0]
    return jnp.clip(out[0], -1, 1)

  def best_of(params, scale, uncond_row, clip_params, key, noise, target, *cond):
    keys = candidate_keys(key, k)
    noises = jax.vmap(lambda c: decoder_noise(c, size))(keys).at[0].set(noise)
    if spread is not None:
      keys, noises = (jax.lax.with_sharding_constraint(a, spread) for a in (keys, noises))
    out = jax.vmap(lambda c, n: one(params, scale, uncond_row, c, n, *cond))(keys, noises)
    if spread is not None:
      out = jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, spread), out)
    if keep_all:
      return out
    images = out[0] if trajectory else out
    best = jnp.argmax(scorer(clip_params, images, target))
    return jax.tree_util.tree_map(lambda a: a[best], out)

  def piece(params, scale, keys, x_T, image_embeds, text, uncond_row, clip_params=None, targets=None):
    if x_T is None:
      x_T = jax.vmap(lambda k: decoder_noise(k, size))(keys)
    image_embeds = image_embeds.astype(jnp.float32)
    if k == 1:
      return jax.vmap(lambda *a: one(params, scale, uncond_row, *a))(keys, x_T, image_embeds, *text)
    return jax.vmap(lambda *a: best_of(params, scale, uncond_row, clip_params, *a))(
        keys, x_T, targets.astype(jnp.float32), image_embeds, *text)
  return piece


def candidate_keys(key, k: int) -> jax.Array:
  """An image's K candidate keys (K, 2): its own key first, then fold_in(key, DECODER_CANDIDATE_KEY + i)."""
  rest = [jax.random.fold_in(key, DECODER_CANDIDATE_KEY + i) for i in range(1, k)]
  return jnp.stack([key] + rest)


def clip_scorer(clip, clip_config) -> Callable:
  """(CLIP params, images in [-1, 1] (K, H, W, 3), target (E,)) → (K,) cosines between each image's CLIP
  image embedding and the target; images not at the CLIP's size are resized (bicubic) to it."""
  encode = clip_encoder.image_encoder(clip, clip_config, value_range=(-1.0, 1.0))
  size = clip_config.image_size

  def score(clip_params, images, target):
    if images.shape[1] != size:
      images = upsample_bicubic(images, size)
    z = encode(clip_params, images).astype(jnp.float32)
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return z @ (target / jnp.linalg.norm(target))
  return score


def invert_piece(decoder, process) -> Callable:
  """(params, scale, images in [-1, 1] (B, H, W, 3), image embeds, text (B rows), uncond (1 row)) → each
  image's DDIM latent x_T under the guided decoder (the paper's inversion; decoding it with sampler
  "ddim", eta 0 over the same `process` gives the image back)."""

  def one(params, scale, uncond_row, x0, img, emb, states, mask):
    cond, uncond = decoder_branches(uncond_row, img, emb, states, mask)
    model_fn = lambda x, t, c: decoder.apply({"params": params}, x, t, *c)  # noqa: E731
    return ddim_invert(process, model_fn, x0[None], cond=cond, uncond=uncond, guidance_scale=scale)[0]

  def piece(params, scale, images, image_embeds, text, uncond_row):
    return jax.vmap(lambda *a: one(params, scale, uncond_row, *a))(images.astype(jnp.float32),
                                                                   image_embeds.astype(jnp.float32), *text)
  return piece


def upsample_piece(stages: Sequence[tuple[SRStage, StageSampling, Any]]) -> Callable:
  """(per-upsampler (params, last params or None), keys, images in [-1, 1]) → images at the output size,
  for `stages` = [(SRStage, settings, respaced process)]. The noisy image is concatenated with the
  bicubic-upsampled low-resolution one; Karlo's last step uses `sr_64_256_last`."""

  def one(i, sr, s, process, params, last_params, key, low):
    up = upsample_bicubic(low[None], sr.size)
    last_t = int(process.timestep_map[0])

    def model_fn(x, t, cond):
      inp = jnp.concatenate([x, cond], axis=-1)
      if last_params is None:
        return sr.model.apply({"params": params}, inp, t)
      return jax.lax.cond(t[0] == last_t, lambda: sr.model.apply({"params": last_params}, inp, t),
                          lambda: sr.model.apply({"params": params}, inp, t))
    x = D.sample(process, model_fn, (1, sr.size, sr.size, 3), jax.random.fold_in(key, SR_KEY + i), cond=up,
                 **sample_kwargs(s))
    return jnp.clip(x[0], -1, 1)

  def piece(sr_weights, keys, images):
    for i, ((sr, s, process), (params, last_params)) in enumerate(zip(stages, sr_weights)):
      images = jax.vmap(lambda k, low, i=i, sr=sr, s=s, pr=process, p=params, lp=last_params:
                        one(i, sr, s, pr, p, lp, k, low))(keys, images)
    return images
  return piece


def best_upsampled(scorer: Callable, upsample_fn: Callable, sr_weights, scorer_params, keys, targets, candidates,
                   spread: jax.sharding.Sharding | None = None) -> tuple[jax.Array, jax.Array]:
  """(each image's best candidate (B,), its output image (B, S, S, 3) in [-1, 1]): every candidate (B, K, h, w, 3)
  taken through the upsamplers with its image's key (as the image would be were it the only one) and rated
  there by `scorer` against the row's target. `spread` divides the B*K upsampler runs over the devices."""
  b, k = candidates.shape[:2]
  flat, flat_keys = candidates.reshape((b * k,) + candidates.shape[2:]), jnp.repeat(keys, k, axis=0)
  if spread is not None:
    flat, flat_keys = (jax.lax.with_sharding_constraint(a, spread) for a in (flat, flat_keys))
  up = upsample_fn(sr_weights, flat_keys, flat)
  if spread is not None:
    up = jax.lax.with_sharding_constraint(up, spread)
  up = up.reshape((b, k) + up.shape[1:])
  best = jnp.argmax(jax.vmap(scorer, in_axes=(None, 0, 0))(scorer_params, up, targets), axis=1)
  return best, up[jnp.arange(b), best]


def whole_program(text_fn: Callable, prior_fn: Callable | None, decoder_fn: Callable, upsample_fn: Callable, *,
                  trajectory: bool, given_noise: bool, rank_by_text: bool = True,
                  rerank_text_fn: Callable | None = None, rate_upsampled: Callable | None = None,
                  spread: jax.sharding.Sharding | None = None) -> Callable:
  """One call as one traced function: (weights, scales, empty caption tokens, keys, tokens, *rest) →
  {"images": uint8, "small", "image_embeds"[, "trajectory"]}. With a `prior_fn` the call starts from
  text; without, `rest` holds (image embeddings[, x_T]). Decoder candidates are rated against the caption's
  text embedding (`rank_by_text`) or else against the image embedding they were drawn from. With a
  `rerank_text_fn` (the text tower of a reranking-only CLIP, whose weights are `weights["rerank"]`, and
  `decoder_fn` scoring with its image tower) the caption's embedding comes from that CLIP instead. With a
  `rate_upsampled` scorer, `decoder_fn` returns every candidate (`keep_all`) and they are rated after the
  upsamplers (`best_upsampled`; `spread` as the decoder's)."""

  def program(weights, scales, empty_tokens, keys, tokens, *rest):
    uncond_row = text_fn(weights["clip"], empty_tokens)
    text = text_fn(weights["clip"], tokens)
    if prior_fn is not None:
      image_embeds = prior_fn(weights["prior"], scales["prior"], keys, text, uncond_row)
    else:
      image_embeds = rest[0]
    x_T = rest[1] if given_noise else None
    targets, scorer_params = (text[0] if rank_by_text else image_embeds), weights["clip"]
    if rerank_text_fn is not None:
      targets, scorer_params = rerank_text_fn(weights["rerank"], tokens)[0], weights["rerank"]
    small = decoder_fn(weights["decoder"], scales["decoder"], keys, x_T, image_embeds, text, uncond_row,
                       scorer_params, targets)
    small, traj = small if trajectory else (small, None)
    if rate_upsampled is not None:
      best, images = best_upsampled(rate_upsampled, upsample_fn, weights["sr"], scorer_params, keys, targets, small,
                                    spread)
      rows = jnp.arange(len(best))
      small, traj = small[rows, best], (None if traj is None else traj[rows, best])
    else:
      images = upsample_fn(weights["sr"], keys, small)
    out = {"images": uint8_images(images), "small": small, "image_embeds": image_embeds.astype(jnp.float32)}
    if trajectory:
      out["trajectory"] = traj
    return out
  return program
