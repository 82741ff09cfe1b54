"""The `embedded` tfds builder: a prepared dataset re-written with its CLIP embeddings in every record.

The prior and the decoder train on (image, caption, CLIP text/image embeddings). Keeping the embeddings
in the *same record* as the image and caption means they cannot drift out of alignment, which separate
`.npy` shards matched by shard id did in DALLE2-pytorch. One BuilderConfig
per run (its name is `--name`), so `open_source(data_dir, "embedded", split, config=NAME)` reads it.

Record keys (a contract with the trainers; L = the checkpoint's context length):
  image            uint8 (H, W, 3), the source image as PNG (lossless, pixel-identical to the source)
  caption, spec    text; `spec` is copied from the source when it has one, else "{}"
  tokens           int32 (L,) CLIP BPE ids, `[sot] + ids + [eot]` zero-padded
  text_mask        bool (L,) true for the real tokens, start and end tokens included
  text_embedding   float32 (embed_dim,) CLIP's projected text embedding, not normalised
  text_states      float16 (default) or float32 (L, text_width), per-token states after `ln_final`
  image_embedding  float32 (embed_dim,) CLIP's projected image embedding, not normalised
Records are written in source order (record i embeds source record i of the same split).

`text_mask` is `unclip_jax.models.clip_encoder.text_mask(tokens)`, the embeddings come from that module's
encoders, and the image tower sees `clip_encoder.clip_pixels(image, image_size)` (the one policy of
`unclip_jax.images`), so sampling and training encode exactly as the records were written.

`metadata.json` beside `dataset_info.json` (also `builder.info.metadata`, or `load_metadata`) holds the
CLIP checkpoint (path, config, `clip_encoder.params_sha256` of its parameters), the source dataset
(data_dir, name, config, version, path), the image preprocessing, and `clip_mean`/`clip_std`: the
per-dimension mean and (population) standard deviation of `image_embedding` over every record written
(`unclip_jax.data.moments`), which the prior standardises with. The same statistics per split, and for
`text_embedding`, sit under `splits`.

Size per record (serialized; `text_states` is raw bytes, 2 or 4 per value, the rest ~1 KB with spec/PNG):
  CLIP          L x text_width   states float16   float32    per 50k records (float16)
  tiny          16 x 32          1.7 KB           2.7 KB     (the tests' preset)
  ViT-B/32      77 x 512         84 KB            162 KB     4.2 GB
  ViT-L/14      77 x 768         125 KB           243 KB     6.3 GB
plus the PNG (a few hundred bytes for a 64-pixel shapes scene, ~10 KB for a 64-pixel photo).
Captions longer than L - 2 tokens are cut (the tokenizer keeps the end token); metadata counts them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from unclip_jax.data import pipeline
from unclip_jax.data.moments import Moments
from unclip_jax.errors import UserError
from unclip_jax.images import FIT_POLICY, png_bytes, to_rgb

NAME = "embedded"
FILE_FORMAT = "array_record"
METADATA_FILE = "metadata.json"  # where tfds' MetadataDict saves itself
METADATA_FORMAT = 1
STATES_DTYPES = ("float16", "float32")
RECORD_KEYS = ("image", "caption", "spec", "tokens", "text_mask", "text_embedding", "text_states",
               "image_embedding")
IMAGE_PREPROCESSING = (f"unclip_jax.images.fit_image to the CLIP's image_size ({FIT_POLICY}); an RGB image of "
                       "that size is used as it is; then standardised with the config's image_mean/image_std")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass
class EmbeddedConfig(tfds.core.BuilderConfig):
  """One embedding run: which CLIP over which source dataset."""

  checkpoint: str = ""
  source_data_dir: str = ""
  source_name: str = ""
  source_config: str | None = None
  splits: tuple[str, ...] = ()
  batch_size: int = 64
  states_dtype: str = "float16"


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Embedded(tfds.core.GeneratorBasedBuilder):
  """A source dataset with CLIP tokens, text states and text/image embeddings in every record."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: list[EmbeddedConfig] = []  # one per run, from `make_builder`

  def __init__(self, *, clip_config, clip_params, source_path: Path, **kwargs):
    self._clip_config, self._clip_params = clip_config, clip_params
    self._source_path = Path(source_path)
    super().__init__(**kwargs)

  def download_and_prepare(self, *args, **kwargs):
    """As tfds', with tfds' own bars (which cannot know the count) replaced by one per split over examples."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      tqdm_utils.display_progress_bar(was_active)

  def _info(self) -> tfds.core.DatasetInfo:
    c, clip = self.builder_config, self._clip_config
    source = tfds.builder_from_directory(str(self._source_path)).info
    shape = tuple(source.features["image"].shape[:2]) + (3,)
    length = clip.context_length
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"{self.__doc__} Source: {source.full_name} from {c.source_data_dir}; "
                     f"CLIP checkpoint: {c.checkpoint}. See metadata.json."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png"),
            "caption": tfds.features.Text(),
            "spec": tfds.features.Text(),
            "tokens": tfds.features.Tensor(shape=(length,), dtype=np.int32),
            "text_mask": tfds.features.Tensor(shape=(length,), dtype=np.bool_),
            "text_embedding": tfds.features.Tensor(shape=(clip.embed_dim,), dtype=np.float32),
            # raw bytes: tfds would otherwise widen float16 to a float32 `float_list` and save nothing
            "text_states": tfds.features.Tensor(shape=(length, clip.text_width), dtype=np.dtype(c.states_dtype),
                                                encoding=tfds.features.Encoding.BYTES),
            "image_embedding": tfds.features.Tensor(shape=(clip.embed_dim,), dtype=np.float32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # keep source order; the trainers shuffle with grain
        license=f"As the source dataset ({source.full_name}).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the source is a prepared dataset
    from unclip_jax.models.clip_encoder import ClipEmbedder, params_sha256
    from unclip_jax.models.tokenizer import Tokenizer

    c, config, params = self.builder_config, self._clip_config, self._clip_params
    self._embedder = ClipEmbedder(config, params, c.batch_size)
    self._tokenizer = Tokenizer(context_length=config.context_length)
    self._moments = {}
    meta = self.info.metadata
    meta.update({
        "format": METADATA_FORMAT,
        "clip": {"checkpoint": c.checkpoint, "config": config.to_dict(), "params_sha256": params_sha256(params)},
        "source": {"data_dir": c.source_data_dir, "name": c.source_name, "config": c.source_config,
                   "version": self._source_path.name, "path": str(self._source_path)},
        "states_dtype": c.states_dtype,
        "image_preprocessing": IMAGE_PREPROCESSING,
        "splits": {},
    })
    return {split: self._generate_examples(split) for split in c.splits}

  def _generate_examples(self, split: str):
    from tqdm import tqdm

    from unclip_jax.models.clip_encoder import clip_pixels, text_mask

    c, clip = self.builder_config, self._clip_config
    source = pipeline.open_source(c.source_data_dir, c.source_name, split, c.source_config)
    count = len(source)
    stride = 2 ** 128 // count  # integer keys, spread over tfds' hash range: kept in order, bucketed evenly
    image_moments, text_moments = Moments(clip.embed_dim), Moments(clip.embed_dim)
    states_dtype = np.dtype(c.states_dtype)
    truncated = 0
    with tqdm(total=count, desc=f"embedding {c.source_name} {split}", unit=" examples") as progress:
      for start in range(0, count, c.batch_size):
        indices = list(range(start, min(start + c.batch_size, count)))
        examples = source.__getitems__(indices) if hasattr(source, "__getitems__") else [source[i] for i in indices]
        images = [to_rgb(ex["image"]) for ex in examples]
        captions = [_text(ex["caption"]) for ex in examples]
        tokens = self._tokenizer(captions, clip.context_length)
        truncated += sum(len(self._tokenizer.encode(t)) + 2 > clip.context_length for t in captions)
        pixels = np.stack([clip_pixels(im, clip.image_size) for im in images])
        out = self._embedder(pixels, tokens)
        masks = text_mask(tokens)
        image_moments.update(out["image_embedding"])
        text_moments.update(out["text_embedding"])
        for j, ex in enumerate(examples):
          yield (start + j) * stride, {
              "image": png_bytes(images[j]),
              "caption": captions[j],
              "spec": _text(ex["spec"]) if "spec" in ex else "{}",
              "tokens": tokens[j],
              "text_mask": masks[j],
              "text_embedding": out["text_embedding"][j],
              "text_states": out["text_states"][j].astype(states_dtype),
              "image_embedding": out["image_embedding"][j],
          }
        progress.update(len(examples))
    self._moments[split] = image_moments
    meta = self.info.metadata
    meta["splits"][split] = {
        "num_examples": count, "truncated_captions": int(truncated),
        "clip_mean": image_moments.mean.tolist(), "clip_std": image_moments.std.tolist(),
        "text_mean": text_moments.mean.tolist(), "text_std": text_moments.std.tolist(),
    }
    total = Moments(clip.embed_dim)
    for m in self._moments.values():
      total.merge(m)
    meta.update({"num_examples": total.count, "clip_mean": total.mean.tolist(), "clip_std": total.std.tolist()})


def _source_config(data_dir: Path, name: str, config: str | None) -> str | None:
  """The source's config folder: as given, or the only one there is when the dataset has configs."""
  base = data_dir / name
  if config is not None or not base.is_dir() or any((p / "dataset_info.json").is_file() for p in base.glob("*.*.*")):
    return config
  configs = sorted(p.name for p in base.iterdir() if p.is_dir() and any(
      (v / "dataset_info.json").is_file() for v in p.glob("*.*.*")))
  if len(configs) > 1:
    raise UserError(f"{base} holds several prepared configs ({', '.join(configs)}); pick one with --dataset_config")
  return configs[0] if configs else None


def make_builder(*, checkpoint: str, data_dir: str, dataset: str, name: str, dataset_config: str | None = None,
                 splits: Sequence[str] | None = None, batch_size: int = 64, states_dtype: str = "float16",
                 out_data_dir: str | None = None) -> Embedded:
  """Checks every input and loads the CLIP (a `UserError` for any problem); returns the builder, nothing written yet."""
  from unclip_jax.models.clip_encoder import load_clip, read_clip_config

  if not _NAME_RE.match(name) or re.fullmatch(r"\d+\.\d+\.\d+", name):
    raise UserError(f"--name {name!r} must be letters, digits, '_', '-' or '.', starting with a letter or digit")
  if batch_size < 1:
    raise UserError(f"--batch_size must be positive, got {batch_size}")
  if states_dtype not in STATES_DTYPES:
    raise UserError(f"--states_dtype must be one of {', '.join(STATES_DTYPES)}, got {states_dtype!r}")
  checkpoint = str(Path(checkpoint).absolute())
  read_clip_config(checkpoint)  # a bad checkpoint fails here, before any other work
  import jax

  if jax.process_count() > 1:  # every process would write the same folder
    raise UserError("embed runs in a single process (it uses that process's local devices); "
                    "run it without jax.distributed")
  source_root = Path(data_dir).absolute()
  source_config = _source_config(source_root, dataset, dataset_config)
  source_path = pipeline.dataset_dir(source_root, dataset, source_config)
  source_info = tfds.builder_from_directory(str(source_path)).info
  missing = [k for k in ("image", "caption") if k not in source_info.features]
  if missing:
    raise UserError(f"dataset {source_path} has no {missing[0]!r} feature; embed needs 'image' and 'caption'")
  source_splits = source_info.splits
  available = list(source_splits)
  splits = list(splits) if splits else available
  unknown = [s for s in splits if s not in available]
  if unknown or len(set(splits)) != len(splits):
    what = f"no split {unknown[0]!r}" if unknown else "a repeated split in --splits"
    raise UserError(f"dataset {source_path} has {what}; it has: {', '.join(available)}")
  empty = [s for s in splits if source_splits[s].num_examples < 1]
  if empty:
    raise UserError(f"split {empty[0]!r} of dataset {source_path} is empty; leave it out of --splits")
  out_root = Path(out_data_dir).absolute() if out_data_dir else source_root
  existing = sorted(p for p in (out_root / NAME / name).glob("*.*.*") if (p / "dataset_info.json").is_file())
  if existing:
    raise UserError(f"an embedded dataset named {name!r} already exists at {existing[-1]}; "
                    "choose another --name or delete that folder first")
  config = EmbeddedConfig(
      name=name, description=f"{dataset}/{source_config or ''} embedded with {checkpoint}",
      checkpoint=checkpoint, source_data_dir=str(source_root), source_name=dataset,
      source_config=source_config, splits=tuple(splits), batch_size=batch_size, states_dtype=states_dtype)
  clip_config, clip_params = load_clip(checkpoint)  # last: the slow step, and it checks every array's shape
  return Embedded(clip_config=clip_config, clip_params=clip_params, source_path=source_path, config=config,
                  data_dir=str(out_root), file_format=FILE_FORMAT)


def embed(**kwargs) -> Embedded:
  """`make_builder(**kwargs)` then writes the dataset; tfds builds it in an `incomplete.*` folder and renames."""
  builder = make_builder(**kwargs)
  builder.download_and_prepare()
  return builder


def load_metadata(data_dir: str | Path, name: str) -> dict[str, Any]:
  """`metadata.json` of the embedded dataset `name` under `data_dir` (newest version)."""
  path = pipeline.dataset_dir(data_dir, NAME, name) / METADATA_FILE
  if not path.is_file():
    raise UserError(f"{path.parent} has no {METADATA_FILE}; it was not written by unclip_jax.embed")
  return json.loads(path.read_text())


def clip_stats(metadata: Mapping[str, Any], split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(`clip_mean`, `clip_std`) as float32 arrays: over every written record, or over one split."""
  source = metadata if split is None else metadata["splits"][split]
  return np.asarray(source["clip_mean"], np.float32), np.asarray(source["clip_std"], np.float32)
