"""Zero-shot image classification with a CLIP stage checkpoint (library API and CLI).

    python -m unclip_jax.zeroshot --checkpoint DIR --labels "cat,dog,car" IMAGE...
    python -m unclip_jax.zeroshot --labels "red circle,blue square" IMAGE...   (the packaged demo's CLIP)

DIR is a CLIP stage checkpoint or a pipeline folder (its CLIP is used); the default is the demo pipeline
shipped in the package.

Each class is embedded through several prompt templates ("a photo of a {}."); each template embedding
is L2-normalised, the class embedding is their renormalised mean (CLIP's prompt ensembling), and an
image's class probabilities are the softmax of the temperature-scaled cosine similarities. Images are read
with `unclip_jax.images.load_image` and encoded with `unclip_jax.models.clip_encoder`, as everywhere else.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from unclip_jax import xla_flags
from unclip_jax.errors import ArgumentParser, UserError, run_cli
from unclip_jax.images import load_image

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a {}.",
)


class ZeroShotClassifier:
  """Class embeddings computed once from `labels` × `templates`; `predict(images)` gives probabilities."""

  def __init__(self, config, params, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
               tokenizer=None):
    import jax

    from unclip_jax.models import clip as clip_model
    from unclip_jax.models.clip_encoder import image_encoder, text_encoder
    from unclip_jax.models.tokenizer import Tokenizer

    labels = [str(l).strip() for l in labels]
    if not labels or any(not l for l in labels):
      raise UserError("the label list is empty or has an empty label; pass e.g. --labels \"cat,dog,car\"")
    if not templates or any("{}" not in t for t in templates):
      raise UserError("every prompt template must contain '{}' where the label goes")
    self.config, self.labels, self.templates = config, labels, list(templates)
    tokenizer = tokenizer or Tokenizer(context_length=config.context_length)
    model = clip_model.CLIP(config)
    self._encode_image = jax.jit(image_encoder(model, config))
    encode_text = jax.jit(lambda p, t: text_encoder(model)(p, t)[0])
    self._params = params
    tokens = tokenizer([t.format(l) for l in labels for t in self.templates], config.context_length)
    emb = np.asarray(clip_model.l2_normalize(encode_text(params, tokens)))
    emb = emb.reshape(len(labels), len(self.templates), -1).mean(axis=1)
    self.class_embeddings = emb / np.linalg.norm(emb, axis=-1, keepdims=True)  # (classes, embed_dim)
    self.logit_scale = float(np.exp(min(float(params["logit_scale"]), np.log(100.0))))

  def logits(self, images) -> np.ndarray:
    """uint8 (B, S, S, 3) images at the config's image size → (B, classes) scaled cosine similarities."""
    from unclip_jax.models import clip as clip_model

    img = np.asarray(clip_model.l2_normalize(self._encode_image(self._params, images)))
    return self.logit_scale * img @ self.class_embeddings.T

  def predict(self, images) -> np.ndarray:
    z = self.logits(images)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def clip_folder(checkpoint: str | None) -> Path:
  """The CLIP stage folder of `checkpoint`: itself, or a pipeline folder's clip stage (default: the demo)."""
  from unclip_jax.pipeline import PIPELINE_FILE, default_pipeline, read_pipeline

  folder = Path(checkpoint) if checkpoint else default_pipeline()
  if (folder / PIPELINE_FILE).is_file():
    return read_pipeline(folder)["paths"]["clip"]
  return folder


def main(argv: Sequence[str]) -> int:
  parser = ArgumentParser(prog="python -m unclip_jax.zeroshot", description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", default=None,
                      help="CLIP stage checkpoint or pipeline folder (default: the packaged demo pipeline)")
  parser.add_argument("--labels", required=True, help="comma-separated class names")
  parser.add_argument("--template", action="append", dest="templates",
                      help="prompt template with {} (repeatable); default: a small photo ensemble")
  parser.add_argument("--top", type=int, default=5, help="classes to print per image")
  parser.add_argument("images", nargs="+", metavar="IMAGE")
  args = parser.parse_args(argv)
  labels = [l.strip() for l in args.labels.split(",")]
  if not any(labels) or not all(labels):
    raise UserError(f"--labels {args.labels!r} has an empty class name; pass e.g. --labels \"cat,dog,car\"")
  if args.top < 1:
    raise UserError("--top must be at least 1")
  for path in args.images:  # fail on a bad image before the slow model load
    if not Path(path).is_file():
      raise UserError(f"image {path} does not exist" if not Path(path).exists() else f"{path} is not a file")
  xla_flags.apply_defaults()  # XLA CPU defaults unless XLA_FLAGS is set; before JAX starts (README "Benchmarks")
  xla_flags.enable_compile_cache()  # compiled programs kept between runs (README "Benchmarks")
  from unclip_jax.models.clip_encoder import load_clip

  config, params = load_clip(clip_folder(args.checkpoint))
  images = np.stack([load_image(p, config.image_size) for p in args.images])
  classifier = ZeroShotClassifier(config, params, labels, args.templates or DEFAULT_TEMPLATES)
  probs = classifier.predict(images)
  for path, p in zip(args.images, probs):
    order = np.argsort(-p)[:args.top]
    print(f"{path}: " + ", ".join(f"{labels[i]} {p[i]:.4f}" for i in order))
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
