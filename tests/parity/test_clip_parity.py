"""Our CLIP with converted weights reproduces open_clip's embeddings and per-token text states (float32)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.peers import require

pytestmark = pytest.mark.peers

open_clip = require("open_clip")
import torch  # noqa: E402  (after the peer check, which skips this module without torch)

from unclip_jax.checkpoint import load_stage_params, read_stage  # noqa: E402
from unclip_jax.convert import clip as convert  # noqa: E402
from unclip_jax.models import clip as clip_model  # noqa: E402
from unclip_jax.models.tokenizer import tokenize  # noqa: E402

TOL = 1e-5
PROMPTS = ["a photo of a cat.", "two red squares and a blue circle, seen from above!"]


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _randomize(model, seed=0, scale=0.02):
  """open_clip initialises biases to 0 and LayerNorms to 1; random values make the comparison stricter."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == "logit_scale":
        continue
      std = scale if p.ndim > 1 else 0.1
      base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                                   "ln_final.weight")) else 0.0
      p.copy_(base + std * torch.randn(p.shape, generator=g))
  return model.eval()


def _torch_outputs(model, images_nchw, tokens):
  with torch.no_grad():
    img = model.encode_image(images_nchw)
    txt = model.encode_text(tokens)
    x = model.token_embedding(tokens) + model.positional_embedding
    states = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
  return img.numpy(), txt.numpy(), states.numpy()


def _ours(config, params, images_nchw, tokens):
  out = clip_model.CLIP(config).apply({"params": params}, np.asarray(images_nchw).transpose(0, 2, 3, 1),
                                      np.asarray(tokens, np.int32))
  return np.asarray(out["image_embeds"]), np.asarray(out["text_embeds"]), np.asarray(out["text_states"])


def _check(ref, got):
  errors = [_rel_err(g, r) for g, r in zip(got, ref)]
  assert max(errors) <= TOL, errors
  return errors


@pytest.fixture(scope="module")
def tiny_openai():
  torch.manual_seed(0)
  model = open_clip.CLIP(embed_dim=32, quick_gelu=True,
                         vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
                         text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
  model = _randomize(model)
  images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  tokens = torch.from_numpy(tokenize(PROMPTS).astype(np.int64))
  return model, images, tokens


def test_tiny_in_memory_conversion_matches_open_clip(tiny_openai):
  model, images, tokens = tiny_openai
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  config = convert.infer_config(sd, source="openai", vision_heads=2, text_heads=2)
  assert (config.vision_width, config.vision_layers, config.patch_size, config.image_size) == (64, 2, 8, 32)
  assert config.activation == "quick_gelu"
  errors = _check(_torch_outputs(model, images, tokens), _ours(config, convert.convert_state_dict(sd, config),
                                                                images, tokens))
  print("tiny parity rel. errors (image, text, states):", errors)


def test_tiny_safetensors_cli_matches_open_clip(tiny_openai, tmp_path):
  from safetensors.numpy import save_file

  model, images, tokens = tiny_openai
  path = tmp_path / "tiny.safetensors"
  save_file({k: v.numpy() for k, v in model.state_dict().items()}, str(path))
  out = tmp_path / "ckpt"
  assert convert.main([str(path), "--from", "openai", "--out", str(out), "--vision-heads", "2",
                       "--text-heads", "2"]) == 0
  config = clip_model.CLIPConfig.from_dict(read_stage(out, kind="clip")["config"])
  params = load_stage_params(out, clip_model.abstract_params(config), kind="clip")
  _check(_torch_outputs(model, images, tokens), _ours(config, params, images, tokens))


def test_torch_pt_file_and_gelu_variant(tmp_path):
  torch.manual_seed(1)
  model = open_clip.CLIP(embed_dim=16, quick_gelu=False,
                         vision_cfg=dict(image_size=16, patch_size=4, width=32, layers=1, head_width=16),
                         text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
  model = _randomize(model, 3, scale=0.2)  # large weights make GELU and QuickGELU clearly differ
  path = tmp_path / "model.pt"
  torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 3}, path)
  sd = convert.load_state_dict(path)
  config = convert.infer_config(sd, source="open_clip", vision_heads=2, text_heads=2)
  assert config.activation == "gelu"
  images = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
  tokens = torch.from_numpy(tokenize(PROMPTS[:1]).astype(np.int64))
  _check(_torch_outputs(model, images, tokens), _ours(config, convert.convert_state_dict(sd, config), images, tokens))
  # The wrong activation must be visible: parity is a real test of the activation field.
  wrong = config.replace(activation="quick_gelu")
  ref = _torch_outputs(model, images, tokens)
  assert _rel_err(_ours(wrong, convert.convert_state_dict(sd, wrong), images, tokens)[0], ref[0]) > 100 * TOL


def test_vit_b32_matches_open_clip():
  torch.manual_seed(0)
  model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
  n_torch = sum(p.numel() for p in model.parameters())
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  config = convert.infer_config(sd, source="open_clip", model="ViT-B-32")
  params = convert.convert_state_dict(sd, config)
  assert clip_model.count_params(params) == n_torch == 151_277_313
  images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
  tokens = torch.from_numpy(tokenize(PROMPTS).astype(np.int64))
  errors = _check(_torch_outputs(model, images, tokens), _ours(config, params, images, tokens))
  print("ViT-B/32 parity rel. errors (image, text, states):", errors)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_archive_like_openai_releases(tiny_openai, tmp_path):
  """OpenAI ships TorchScript archives; the converter falls back to `torch.jit.load` for them."""
  model, images, tokens = tiny_openai
  traced = torch.jit.trace_module(model, {"encode_image": images}, check_trace=False)
  path = tmp_path / "ViT-tiny.pt"
  traced.save(str(path))
  sd = convert.load_state_dict(path)
  assert "visual.conv1.weight" in sd
  config = convert.infer_config(sd, source="openai", vision_heads=2, text_heads=2)
  _check(_torch_outputs(model, images, tokens), _ours(config, convert.convert_state_dict(sd, config), images, tokens))
