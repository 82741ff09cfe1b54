"""The CLIP converter without torch: safetensors round trip, architecture inference, named tensor errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from unclip_jax.checkpoint import load_stage_params, read_stage
from unclip_jax.convert import clip as convert
from unclip_jax.convert.__main__ import main as dispatch
from unclip_jax.errors import UserError, run_cli
from unclip_jax.models import clip as clip_model

CONFIG = clip_model.PRESETS["tiny"].replace(vision_layers=1, text_layers=2, activation="quick_gelu")


@pytest.fixture(scope="module")
def state_dict():
  params = clip_model.init_params(CONFIG, jax.random.key(0))
  return params, convert.export_state_dict(params)


def test_export_uses_openai_names_and_layouts(state_dict):
  _, sd = state_dict
  w = CONFIG.vision_width
  assert sd["visual.conv1.weight"].shape == (w, 3, CONFIG.patch_size, CONFIG.patch_size)
  assert sd["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * w, w)
  assert sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape == (4 * w, w)
  assert sd["transformer.resblocks.1.ln_2.weight"].shape == (CONFIG.text_width,)
  assert sd["token_embedding.weight"].shape == (CONFIG.vocab_size, CONFIG.text_width)
  assert sd["visual.proj"].shape == (w, CONFIG.embed_dim) and sd["logit_scale"].shape == ()
  assert "visual.class_embedding" in sd and "ln_final.bias" in sd and "text_projection" in sd


def test_safetensors_cli_round_trip(state_dict, tmp_path, capsys):
  params, sd = state_dict
  path = tmp_path / "w.safetensors"
  save_file(sd, str(path))
  out = tmp_path / "ckpt"
  assert dispatch(["clip", str(path), "--from", "openai", "--out", str(out), "--vision-heads", "2",
                   "--text-heads", "2"]) == 0
  assert "parameters" in capsys.readouterr().out
  meta = read_stage(out, kind="clip")
  config = clip_model.CLIPConfig.from_dict(meta["config"])
  assert config.replace(image_mean=CONFIG.image_mean, image_std=CONFIG.image_std) == CONFIG
  restored = load_stage_params(out, clip_model.abstract_params(config), kind="clip")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_float16_weights_are_read_as_float32(state_dict, tmp_path):
  params, sd = state_dict
  path = tmp_path / "half.safetensors"
  save_file({k: v.astype(np.float16) for k, v in sd.items()}, str(path))  # OpenAI's releases are fp16
  loaded = convert.load_state_dict(path)
  converted = convert.convert_state_dict(loaded, CONFIG)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(converted))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(converted)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-4)


def test_inference_defaults(state_dict):
  _, sd = state_dict
  inferred = convert.infer_config(sd, source="open_clip")
  assert inferred.activation == "gelu"  # open_clip's own trainings; OpenAI weights use QuickGELU
  assert (inferred.vision_heads, inferred.text_heads) == (1, 1)  # width // 64, floored at 1
  assert inferred.context_length == CONFIG.context_length and inferred.vision_layers == 1
  assert convert.infer_config(sd, source="open_clip", model="ViT-B-32-quickgelu").activation == "quick_gelu"


def test_missing_and_misshaped_tensors_are_named(state_dict):
  _, sd = state_dict
  broken = dict(sd)
  del broken["transformer.resblocks.1.attn.out_proj.bias"]
  with pytest.raises(UserError, match=r"transformer\.resblocks\.1\.attn\.out_proj\.bias is missing"):
    convert.convert_state_dict(broken, CONFIG)
  broken = dict(sd, **{"visual.proj": np.zeros((5, 5), np.float32)})
  with pytest.raises(UserError, match=r"visual\.proj has shape \(5, 5\)"):
    convert.convert_state_dict(broken, CONFIG)
  broken = dict(sd, **{"visual.transformer.resblocks.7.ln_1.weight": np.zeros(32, np.float32)})
  with pytest.raises(UserError, match=r"resblocks\.7\.ln_1\.weight"):
    convert.convert_state_dict(broken, CONFIG)
  with pytest.raises(UserError, match="ResNet"):
    convert.infer_config({"visual.layer1.0.conv1.weight": np.zeros(1)})


@pytest.mark.parametrize("case", ["missing_file", "bad_model", "garbage_file", "no_args", "existing_out"])
def test_cli_errors_are_one_line(state_dict, tmp_path, capsys, case):
  _, sd = state_dict
  path = tmp_path / "w.safetensors"
  save_file(sd, str(path))
  out = tmp_path / "out"
  argv = ["clip", str(path), "--from", "openai", "--out", str(out)]
  if case == "missing_file":
    argv[1] = str(tmp_path / "none.safetensors")
  elif case == "bad_model":
    argv += ["--model", "ViT-Q/99"]
  elif case == "garbage_file":
    path.write_bytes(b"not safetensors at all")
  elif case == "no_args":
    argv = ["clip"]
  elif case == "existing_out":
    out.mkdir()
  with pytest.raises(SystemExit) as exit_info:
    run_cli(dispatch, argv)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
