"""Tiny random folders in Karlo's released layouts, written by diffusers' own `save_pretrained`:
`UnCLIPPipeline` (kakaobrain/karlo-v1-alpha) and `UnCLIPImageVariationPipeline` (karlo-v1-alpha-image-variations),
with transformers CLIP towers and a CLIP tokenizer built from our BPE vocabulary. The image-variations
folder shares the text folder's text encoder, decoder and super-resolution models, as diffusers' conversion
script builds it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import C, PRIOR, decoder_unet, sr_unet

CONTEXT = PRIOR["num_embeddings"]  # CLIP's context length is the prior's number of text tokens
WIDTH = PRIOR["embedding_dim"]     # Karlo: text width = projection dim = prior embedding dim (768)
DECODER_SIZE, SR_SIZE, CLIP_IMAGE = 8, 32, 16


def tokenizer_files(folder: Path) -> Path:
  """vocab.json + merges.txt of our BPE vocabulary, Hugging Face spelling of the special tokens."""
  from unclip_jax.convert.hf_tokenizer import HF_SPECIAL
  from unclip_jax.models.tokenizer import Tokenizer

  ours = Tokenizer(context_length=CONTEXT)
  folder.mkdir(parents=True, exist_ok=True)
  vocab = {HF_SPECIAL.get(t, t): i for t, i in ours.encoder.items()}
  (folder / "vocab.json").write_text(json.dumps(vocab))
  merges = sorted(ours.ranks, key=ours.ranks.get)
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  return folder


def _randomize(torch, *modules, scale=0.05):
  with torch.no_grad():
    for m in modules:
      m.eval()
      for p in m.parameters():
        p.normal_(0, scale)


def build(root: Path):
  """Writes root/karlo (UnCLIPPipeline) and root/variations (UnCLIPImageVariationPipeline); returns the
  folders and the two diffusers pipelines that wrote them."""
  from tests.peers import import_torchvision, require

  diffusers = require("diffusers")
  import_torchvision()
  import torch
  import transformers
  from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

  torch.manual_seed(0)
  bpe = tokenizer_files(root / "bpe")
  tok = transformers.CLIPTokenizer(vocab=json.loads((bpe / "vocab.json").read_text()),
                                   merges=[tuple(m.split()) for m in (bpe / "merges.txt").read_text().split("\n")[1:-1]],
                                   model_max_length=CONTEXT, pad_token="!")
  text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
      hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2, num_attention_heads=2,
      max_position_embeddings=CONTEXT, projection_dim=WIDTH, vocab_size=49408))
  with torch.no_grad():
    for p in text.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  prior = diffusers.PriorTransformer(**PRIOR)
  proj = UnCLIPTextProjModel(clip_embeddings_dim=WIDTH, time_embed_dim=4 * C[0], cross_attention_dim=48)
  decoder = diffusers.UNet2DConditionModel(**decoder_unet(DECODER_SIZE))
  first, last = diffusers.UNet2DModel(**sr_unet(SR_SIZE)), diffusers.UNet2DModel(**sr_unet(SR_SIZE))
  _randomize(torch, prior, proj, decoder, first, last)
  with torch.no_grad():
    prior.clip_std.abs_().add_(0.5)
  sched = dict(num_train_timesteps=1000)
  pipe = diffusers.UnCLIPPipeline(
      prior=prior, decoder=decoder, text_encoder=text, tokenizer=tok, text_proj=proj, super_res_first=first,
      super_res_last=last,
      prior_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                                clip_sample_range=5.0, **sched),
      decoder_scheduler=diffusers.UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon", **sched),
      super_res_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                                                    **sched))
  pipe.save_pretrained(root / "karlo")

  vision = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=4 * 32, num_hidden_layers=2, num_attention_heads=2, image_size=CLIP_IMAGE,
      patch_size=8, projection_dim=WIDTH))
  with torch.no_grad():
    for p in vision.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  features = transformers.CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE},
                                             crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE},
                                             image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
  variations = diffusers.UnCLIPImageVariationPipeline(
      decoder=decoder, text_encoder=text, tokenizer=tok, text_proj=proj, feature_extractor=features,
      image_encoder=vision, super_res_first=first, super_res_last=last,
      decoder_scheduler=pipe.decoder_scheduler, super_res_scheduler=pipe.super_res_scheduler)
  variations.save_pretrained(root / "variations")
  return {"karlo": root / "karlo", "variations": root / "variations", "pipe": pipe, "variations_pipe": variations}
