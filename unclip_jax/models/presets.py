"""Model sizes by name, inside the package (big_vision's `decode_variant` style).

`configs/<stage>.py` composes a training run from these (`config.model = model_config(kind, preset)`), and
the pipeline builds random-weight pipelines from them, so nothing has to run a config file by path and
sampling never depends on the training code. Each `model_config` is exactly the stage.json `model` dict of
that kind (for "clip", the fields of `CLIPConfig`), which `unclip_jax.models.registry` builds a module from.

Presets: `tiny` (CPU tests; all tiny sizes fit together: embed_dim 32, text width 32, context 16), `demo`
(the shapes demo pipeline of launch/train_demo.sh: embed_dim 64, context 16, a 32 px decoder and a 32→64
upsampler), `karlo` (Kakao Brain's released sizes), `paper` (the unCLIP paper's). See the stage configs.
"""

from __future__ import annotations

import ml_collections

from unclip_jax.models import clip as clip_model

MODEL_PRESETS = {
    "clip": ("tiny", "demo", "vit_b32", "vit_l14"),
    "prior": ("tiny", "demo", "karlo", "paper"),
    "decoder": ("tiny", "demo", "karlo", "paper"),
    "upsampler": ("tiny", "demo", "karlo", "paper"),  # FLAVOUR[_STAGE]; see parse_upsampler
}
CLIP_PRESET_NAMES = {"tiny": "tiny", "demo": "tiny", "vit_b32": "ViT-B/32", "vit_l14": "ViT-L/14"}
# The demo CLIP on top of `tiny`: a 32 px ViT (patch 4, width 96, 3 layers), a 4-layer 64-wide text tower
# (context 16: shapes captions are at most 10 tokens), 64-d embeddings; the text width is the embedding
# width, as the demo prior and decoder expect. ≈3.7M parameters, 3.2M of them the token embedding table.
DEMO_CLIP = dict(embed_dim=64, image_size=32, patch_size=4, vision_width=96, vision_layers=3, vision_heads=3,
                 context_length=16, text_width=64, text_heads=4, text_layers=4)
SMALL = ("tiny", "demo")  # float32 compute, no rematerialisation, no dropout
UPSAMPLER_STAGES = ("64_256", "256_1024")


def _check(kind: str, name: str) -> None:
  if kind not in MODEL_PRESETS:
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_PRESETS)}")
  if name not in MODEL_PRESETS[kind]:
    raise ValueError(f"unknown {kind} preset {name!r}; choose one of {', '.join(MODEL_PRESETS[kind])}")


def parse_upsampler(name: str | None) -> tuple[str, str]:
  """'paper_256_1024' → ('paper', '256_1024'); a bare flavour means 64→256."""
  name = name or "tiny"
  flavour, _, stage = name.partition("_")
  stage = stage or "64_256"
  if flavour not in MODEL_PRESETS["upsampler"] or stage not in UPSAMPLER_STAGES:
    raise ValueError(f"unknown upsampler preset {name!r}; use FLAVOUR[_STAGE] with FLAVOUR in "
                     f"{', '.join(MODEL_PRESETS['upsampler'])} and STAGE in {', '.join(UPSAMPLER_STAGES)}")
  if flavour == "karlo" and stage != "64_256":
    raise ValueError("Karlo released only a 64→256 upsampler; use karlo_64_256 or paper_256_1024")
  if flavour == "demo" and stage != "64_256":
    raise ValueError("the demo pipeline has one upsampler (32→64, the sr_64_256 slot); use demo")
  return flavour, stage


def clip_model_config(name: str) -> ml_collections.ConfigDict:
  """The fields of `CLIPConfig` for a CLIP preset, as a ConfigDict (overridable from the command line)."""
  _check("clip", name)
  fields = clip_model.PRESETS[CLIP_PRESET_NAMES[name]].to_dict()
  if name == "demo":
    fields.update(DEMO_CLIP)
  fields["image_mean"], fields["image_std"] = tuple(fields["image_mean"]), tuple(fields["image_std"])
  bias = fields.pop("init_logit_bias")
  model = ml_collections.ConfigDict(fields)
  # A placeholder keeps the field typed (float) while it is None, so `--config.model.init_logit_bias=-10` works.
  model.init_logit_bias = ml_collections.config_dict.placeholder(float) if bias is None else bias
  return model


def prior_model_config(name: str) -> ml_collections.ConfigDict:
  """The fields of `PriorTransformer` (diffusers' names); `dtype` is the compute dtype."""
  _check("prior", name)
  m = ml_collections.ConfigDict()
  if name == "tiny":
    m.num_attention_heads, m.attention_head_dim, m.num_layers = 2, 16, 2
    m.embedding_dim, m.num_embeddings = 32, 16
  elif name == "demo":  # width 128 (4 heads × 32), 4 layers; the demo CLIP's 64-d embeddings, 16 tokens
    m.num_attention_heads, m.attention_head_dim, m.num_layers = 4, 32, 4
    m.embedding_dim, m.num_embeddings = 64, 16
  elif name == "karlo":
    m.num_attention_heads, m.attention_head_dim, m.num_layers = 32, 64, 20
    m.embedding_dim, m.num_embeddings = 768, 77
  else:
    m.num_attention_heads, m.attention_head_dim, m.num_layers = 32, 64, 24
    m.embedding_dim, m.num_embeddings = 1024, 256
  m.dropout = 0.0
  m.dtype = "float32" if name in SMALL else "bfloat16"
  m.remat = name not in SMALL
  return m


def decoder_model_config(name: str) -> ml_collections.ConfigDict:
  """The fields of `UNet` plus those of its `TextProj` (`clip_embeddings_dim`, `clip_extra_context_tokens`).

  `attention_levels[i]` says whether level i (64, 32, 16, 8 px for 4 levels) has attention."""
  _check("decoder", name)
  m = ml_collections.ConfigDict()
  m.in_channels, m.out_channels = 3, 6  # learned σ: ε and the variance interpolation v
  m.scale_shift = True
  m.mid_attention = True
  m.clip_extra_context_tokens = 4
  m.norm_groups = 32
  if name == "tiny":
    m.image_size, m.text_len = 16, 16
    m.block_out_channels, m.layers_per_block = (32, 64), 1
    m.attention_levels, m.attention_head_dim = (False, True), 16
    m.cross_attention_dim, m.clip_embeddings_dim = 64, 32
    m.norm_groups = 8
  elif name == "demo":  # 32 px (the demo upsampler takes it to 64), attention (self + text) only at 8 px
    # and in the middle block: attention at 16 px cost 26% of the train step on 2 CPU cores (bench train:
    # 1.23 -> 1.68 steps/s without it), which buys the decoder more steps in the recipe's time.
    m.image_size, m.text_len = 32, 16
    m.block_out_channels, m.layers_per_block = (32, 64, 128), 2
    m.attention_levels, m.attention_head_dim = (False, False, True), 32
    m.cross_attention_dim, m.clip_embeddings_dim = 128, 64
    m.norm_groups = 16
  elif name == "karlo":
    m.image_size, m.text_len = 64, 77
    m.block_out_channels, m.layers_per_block = (320, 640, 960, 1280), 3
    m.attention_levels, m.attention_head_dim = (False, True, True, True), 64
    m.cross_attention_dim, m.clip_embeddings_dim = 1536, 768
  else:
    m.image_size, m.text_len = 64, 256
    m.block_out_channels, m.layers_per_block = (512, 1024, 1536, 2048), 3
    m.attention_levels, m.attention_head_dim = (False, True, True, True), 64
    m.cross_attention_dim, m.clip_embeddings_dim = 2048, 1024
  m.dropout = 0.0 if name in SMALL else 0.1
  m.dtype = "float32" if name in SMALL else "bfloat16"
  m.remat = name not in SMALL
  return m


def upsampler_model_config(name: str) -> ml_collections.ConfigDict:
  """The fields of the super-resolution `UNet` plus `low_res_size` / `image_size` (FLAVOUR[_STAGE] names)."""
  flavour, stage = parse_upsampler(name)
  m = ml_collections.ConfigDict()
  m.in_channels, m.out_channels = 6, 3
  m.norm_groups = 32
  m.scale_shift = flavour != "karlo"
  low, high = (64, 256) if stage == "64_256" else (256, 1024)
  if flavour == "tiny":
    low, high = (16, 64) if stage == "64_256" else (32, 128)  # ×4 like the real stages; 16 px = tiny decoder
    m.block_out_channels, m.layers_per_block, m.norm_groups = (32, 64), 1, 8
  elif flavour == "demo":
    low, high = 32, 64  # after the 32 px demo decoder
    m.block_out_channels, m.layers_per_block, m.norm_groups = (32, 64, 64), 1, 16
  elif stage == "64_256":
    m.block_out_channels, m.layers_per_block = (320, 640, 960, 1280), 3
  else:
    m.block_out_channels, m.layers_per_block = (192, 192, 384, 384, 768, 768), 2
  m.attention_levels = (False,) * len(m.block_out_channels)
  m.mid_attention = False
  m.low_res_size, m.image_size = low, high
  m.dropout = 0.1 if (flavour == "paper" and stage == "64_256") else 0.0
  m.dtype = "float32" if flavour in SMALL else "bfloat16"
  m.remat = flavour not in SMALL
  return m


_BUILDERS = {"clip": clip_model_config, "prior": prior_model_config, "decoder": decoder_model_config,
             "upsampler": upsampler_model_config}


def model_config(kind: str, name: str) -> ml_collections.ConfigDict:
  """The model sub-config of `kind` ("clip", "prior", "decoder", "upsampler") at preset `name`."""
  if kind not in _BUILDERS:
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(_BUILDERS)}")
  return _BUILDERS[kind](name)
