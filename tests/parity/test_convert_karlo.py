"""`python -m unclip_jax.convert karlo`: tiny diffusers Karlo folder → stages that give diffusers' outputs; errors.

The whole pipeline (text encoder, tokenizer, sampling, weight layouts) is tested in test_karlo_pipeline.py."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.parity import karlo_folders
from tests.peers import require
from unclip_jax import checkpoint
from unclip_jax.convert.__main__ import main as convert_main
from unclip_jax.errors import UserError
from unclip_jax.models import prior as prior_lib
from unclip_jax.models import unet as unet_lib

pytestmark = pytest.mark.peers

@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
  """A Karlo-layout folder of tiny random diffusers models (written by UnCLIPPipeline.save_pretrained), and the
  torch models themselves. Without the peers the module skips (fails under UNCLIP_JAX_REQUIRE_PEERS=1)."""
  torch = require("torch")
  f = karlo_folders.build(tmp_path_factory.mktemp("karlo"))
  pipe = f["pipe"]
  models = {name: getattr(pipe, name) for name in ("prior", "text_proj", "decoder", "super_res_first",
                                                   "super_res_last")}
  return f["karlo"], models, torch


def _restore(folder, kind):
  meta = checkpoint.read_stage(folder, kind=kind)
  m = meta["config"]["model"]
  if kind == "prior":
    model = prior_lib.from_config(m)
    abstract = jax.eval_shape(lambda: prior_lib.init_variables(model, jax.random.key(0)))
  elif kind == "decoder":
    model = unet_lib.decoder_from_config(m)
    abstract = jax.eval_shape(lambda: unet_lib.init_decoder(model, jax.random.key(0), image_size=16, text_len=5))
    abstract = abstract["params"]
  else:
    model = unet_lib.unet_from_config(m, decoder=False)
    abstract = jax.eval_shape(lambda: unet_lib.init_unet(model, jax.random.key(0), image_size=16))["params"]
  return meta, model, checkpoint.load_stage_params(folder, abstract, kind=kind)


def _rel(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_convert_and_compare_outputs(karlo, tmp_path, capsys):
  src, models, torch = karlo
  out = tmp_path / "out"
  assert convert_main(["karlo", str(src), "--out", str(out)]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["clip", "decoder", "pipeline.json", "prior", "sr_64_256",
                                                   "sr_64_256_last"]
  assert "prior:" in capsys.readouterr().out
  rng = np.random.default_rng(0)

  meta, prior, variables = _restore(out / "prior", "prior")
  assert meta["config"]["diffusion"]["prediction"] == "x0" and meta["config"]["model"]["num_layers"] == 1
  x, pe = rng.normal(size=(2, 2, 24)).astype(np.float32)
  enc = rng.normal(size=(2, 5, 24)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  with torch.no_grad():
    ref = models["prior"](torch.tensor(x), torch.tensor([3, 700]), torch.tensor(pe), torch.tensor(enc),
                          attention_mask=torch.tensor(mask)).predicted_image_embedding.numpy()
  assert _rel(prior.apply(variables, x, jnp.array([3, 700]), pe, enc, mask), ref) <= 1e-4
  np.testing.assert_allclose(variables["stats"]["clip_std"], models["prior"].clip_std.detach().numpy()[0])

  meta, decoder, params = _restore(out / "decoder", "decoder")
  assert meta["config"]["diffusion"]["variance"] == "learned_range"
  img = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
  e1, e2 = rng.normal(size=(2, 1, 24)).astype(np.float32)
  hid = rng.normal(size=(1, 5, 24)).astype(np.float32)
  with torch.no_grad():
    tokens, added = models["text_proj"](image_embeddings=torch.tensor(e1), prompt_embeds=torch.tensor(e2),
                                        text_encoder_hidden_states=torch.tensor(hid), do_classifier_free_guidance=False)
    ref = models["decoder"](torch.tensor(img), 50, encoder_hidden_states=tokens, class_labels=added).sample.numpy()
  got = decoder.apply({"params": params}, img.transpose(0, 2, 3, 1), jnp.array([50]), e1, e2, hid)
  assert _rel(np.asarray(got).transpose(0, 3, 1, 2), ref) <= 1e-4

  for stage, name in (("sr_64_256", "super_res_first"), ("sr_64_256_last", "super_res_last")):
    meta, sr, params = _restore(out / stage, "upsampler")
    assert meta["config"]["stage"] == "sr_64_256" and meta["config"]["model"]["scale_shift"] is False
    low = rng.normal(size=(1, 6, 16, 16)).astype(np.float32)
    with torch.no_grad():
      ref = models[name](torch.tensor(low), 10).sample.numpy()
    got = sr.apply({"params": params}, low.transpose(0, 2, 3, 1), jnp.array([10]))
    assert _rel(np.asarray(got).transpose(0, 3, 1, 2), ref) <= 1e-4


def _copy_with(src, tmp_path, folder, edit):
  import shutil

  from safetensors.numpy import load_file, save_file

  dst = tmp_path / "edited"
  shutil.copytree(src, dst)
  path = dst / folder / "diffusion_pytorch_model.safetensors"
  state = load_file(str(path))
  edit(state)
  save_file(state, str(path))
  return dst


def test_missing_tensor_is_a_user_error_naming_it(karlo, tmp_path):
  src, _, _ = karlo
  bad = _copy_with(src, tmp_path, "decoder", lambda s: s.pop("down_blocks.1.attentions.0.add_k_proj.weight"))
  with pytest.raises(UserError, match=r"down_blocks\.1\.attentions\.0\.add_k_proj\.weight"):
    convert_main(["karlo", str(bad), "--out", str(tmp_path / "out")])
  assert not (tmp_path / "out").exists()  # everything is checked before anything is written


def test_misshaped_tensor_exits_2_with_one_error_line(karlo, tmp_path):
  src, _, _ = karlo

  def shrink(state):
    state["proj_in.weight"] = state["proj_in.weight"][:, :-1]

  bad = _copy_with(src, tmp_path, "prior", shrink)
  proc = subprocess.run([sys.executable, "-m", "unclip_jax.convert", "karlo", str(bad), "--out", str(tmp_path / "out")],
                        capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", **_env()})
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "'proj_in.weight'" in lines[0], proc.stderr
  assert "(16, 23)" in lines[0]


def _env():
  import os

  return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def test_missing_folder_is_a_user_error(karlo, tmp_path):
  import shutil

  src, _, _ = karlo
  dst = tmp_path / "partial"
  shutil.copytree(src, dst)
  shutil.rmtree(dst / "text_proj")
  with pytest.raises(UserError, match="text_proj"):
    convert_main(["karlo", str(dst), "--out", str(tmp_path / "out")])
  cfg = json.loads((src / "decoder" / "config.json").read_text())
  assert cfg["class_embed_type"] == "identity"
