"""CLIP as the rest of unCLIP uses it: the one home of the text mask, the encoders, the empty caption and loading.

Everything that turns captions or images into CLIP conditioning goes through here, so the embedded
dataset (`unclip_jax.data.embedded`), the trainers' empty caption (`unclip_jax.train.stages.embedded`),
sampling and the zero-shot classifier agree to the bit:
  * `text_mask(tokens)`: true up to and including the end token, found as the argmax of the ids the way
    CLIP pools. This equals the attention mask a CLIP tokenizer returns; `tokens != 0` does not, because
    the BPE id 0 is the byte '!' (e.g. in "wow!$"), which can sit inside a caption.
  * `text_encoder(clip)` / `image_encoder(clip)`: pure functions of (params, inputs), safe to trace or
    compose inside a larger jitted program; `ClipEmbedder` jits both over this process's devices.
  * `clip_pixels(image, size)`: the image tower's uint8 input (`unclip_jax.images.fit_image`, the one
    resize/crop/alpha policy); CLIP's mean/std standardisation happens inside `image_encoder`.
  * `load_clip(directory)`: a CLIP stage checkpoint; `params_sha256(params)`: its fingerprint.
Depends on `unclip_jax.models`, jax and numpy only, plus the checkpoint/image helpers it loads lazily.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.models import clip as clip_model
from unclip_jax.models.layers import inference_weights


def text_mask(tokens):
  """(..., L) token ids → bool (..., L), true up to and including the end token (the largest id).

  numpy in, numpy out; a jax array (or a tracer inside jit) in, a jax array out.
  """
  xp = jnp if isinstance(tokens, jax.Array) else np
  tokens = xp.asarray(tokens)
  return xp.arange(tokens.shape[-1]) <= xp.argmax(tokens, axis=-1)[..., None]


def text_encoder(clip: clip_model.CLIP) -> Callable:
  """`fn(params, tokens (B, L))` → (pooled embeds (B, E), per-token states (B, L, W), mask (B, L)), traceable."""

  def encode(params, tokens):
    embeds, states = clip.apply({"params": params}, tokens, method=clip.encode_text)
    return embeds, states, text_mask(tokens)
  return encode


def image_encoder(clip: clip_model.CLIP, config: clip_model.CLIPConfig | None = None,
                  value_range: tuple[float, float] = (0.0, 1.0)) -> Callable:
  """`fn(params, images (B, S, S, 3))` → (B, E) unnormalised CLIP image embeddings, traceable.

  Images are at `config.image_size` (see `clip_pixels`): uint8, or floats in `value_range`; the config's
  mean/std standardisation happens inside. `config` defaults to the module's own.
  """
  config = config or clip.config

  def encode(params, images):
    x = clip_model.normalize_images(images, config, value_range)
    return clip.apply({"params": params}, x, method=clip.encode_image)
  return encode


def clip_pixels(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, 1|3|4) → uint8 (size, size, 3), the image tower's input: `unclip_jax.images.fit_image`.

  An image already `size` x `size` (RGB) passes unchanged, so its embedding equals a direct forward on it.
  """
  from unclip_jax.images import fit_image

  return fit_image(image, size)


def empty_caption(config_or_context_length: clip_model.CLIPConfig | int, tokenizer=None) -> np.ndarray:
  """The tokens of "" (start and end token, zero-padded): int32 (1, L)."""
  length = getattr(config_or_context_length, "context_length", config_or_context_length)
  if tokenizer is None:
    from unclip_jax.models.tokenizer import default_tokenizer

    tokenizer = default_tokenizer()
  return np.asarray(tokenizer([""], int(length)), np.int32)


def encode_empty_caption(clip: clip_model.CLIP, params, context_length: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The unconditional branch of guidance, "" encoded: numpy (embeds (1, E), states (1, L, W), mask (1, L))."""
  tokens = empty_caption(context_length or clip.config.context_length)
  embeds, states, mask = jax.jit(text_encoder(clip))(params, tokens)
  return np.asarray(embeds, np.float32), np.asarray(states, np.float32), np.asarray(mask)


def read_clip_config(directory: str | os.PathLike) -> clip_model.CLIPConfig:
  """The CLIPConfig in a CLIP stage checkpoint's stage.json (fast: no arrays read); problems are `UserError`s."""
  from unclip_jax.checkpoint import read_stage
  from unclip_jax.errors import UserError

  meta = read_stage(directory, kind="clip")
  try:
    return clip_model.CLIPConfig.from_dict(meta["config"])
  except (TypeError, ValueError) as e:
    raise UserError(f"{directory}/stage.json has an invalid CLIP config: {e}") from None


def load_clip(directory: str | os.PathLike) -> tuple[clip_model.CLIPConfig, dict]:
  """(CLIPConfig, params) from a CLIP stage checkpoint; any problem with it is a `UserError`."""
  from unclip_jax.checkpoint import load_stage_params

  config = read_clip_config(directory)
  return config, load_stage_params(directory, clip_model.abstract_params(config), kind="clip")


def params_sha256(params) -> str:
  """A fingerprint of the parameter values, so a pipeline can check it uses the CLIP the data was embedded with."""
  digest = hashlib.sha256()
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.ascontiguousarray(np.asarray(leaf, np.float32))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(str(arr.shape).encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()


class ClipEmbedder:
  """Both encoders in one jitted forward over fixed-size batches, data-parallel over this process's devices.

  Batches are zero-padded to `batch_size` rounded up to a multiple of the local device count, so the
  forward compiles once; parameters are replicated and the batch is split along its first axis.
  """

  def __init__(self, config: clip_model.CLIPConfig, params, batch_size: int):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    self.config = config
    devices = jax.local_devices()
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    mesh = Mesh(np.array(devices), ("data",))
    self._data = NamedSharding(mesh, P("data"))
    self._params = jax.device_put(inference_weights(params, config.dtype), NamedSharding(mesh, P()))
    clip = clip_model.CLIP(config)
    encode_image, encode_text = image_encoder(clip, config), text_encoder(clip)

    def forward(p, pixels, tokens):
      text_embedding, text_states, _ = encode_text(p, tokens)
      return {"image_embedding": encode_image(p, pixels), "text_embedding": text_embedding,
              "text_states": text_states}

    self._forward = jax.jit(forward)

  def __call__(self, pixels: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 (n, S, S, 3) pixels (`clip_pixels`) and int32 (n, L) tokens, n ≤ batch size → numpy outputs."""
    n = len(pixels)
    pad = self.batch_size - n
    pixels = np.concatenate([pixels, np.zeros((pad, *pixels.shape[1:]), pixels.dtype)]) if pad else pixels
    tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)]) if pad else tokens
    out = self._forward(self._params, jax.device_put(pixels, self._data), jax.device_put(tokens, self._data))
    return {k: np.asarray(v)[:n] for k, v in out.items()}
