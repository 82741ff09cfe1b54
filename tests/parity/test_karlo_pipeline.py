"""`convert karlo` end to end: tiny folders written by diffusers' UnCLIPPipeline / UnCLIPImageVariationPipeline
→ one pipeline folder → `Pipeline.generate` from prompts (text encoder included, one program) equals
UnCLIPPipeline(prompt=...), variations equal UnCLIPImageVariationPipeline, given the same noise; the
.bin, fp16-variant and sharded layouts give the same parameters; bad folders are one `error:` line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import drawn_noise
from tests.parity import karlo_folders
from unclip_jax import pipeline as P
from unclip_jax.convert.__main__ import main as convert_main
from unclip_jax.errors import UserError

pytestmark = pytest.mark.peers

# images in [0, 1]: ours are uint8 (rounding ≤ 0.5/255), the float32 chains differ by ≤ 2e-3
IMAGE_ATOL = 2e-3 + 0.5 / 255
IMAGE_EMBED_RTOL = 1e-4  # CLIP image tower alone, relative to the largest |embedding| entry
EMBED_RTOL = 2e-3  # of the largest |embedding| entry, after 25 guided (scale 4) prior steps


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("karlo_release")
  f = karlo_folders.build(root)
  quiet = lambda *a, **k: None  # noqa: E731
  from unclip_jax.convert.karlo_pipeline import convert

  convert(f["karlo"], root / "text_only", log=quiet)
  convert(f["karlo"], root / "full", variations=f["variations"], log=quiet)
  f["text_only"], f["full"] = root / "text_only", root / "full"
  return f


def _feed_noise(monkeypatch, queues):
  import diffusers.schedulers.scheduling_unclip as sched_mod

  monkeypatch.setattr(sched_mod, "randn_tensor", lambda shape, **k: queues[shape[-1]].pop(0))


def _nchw(torch, a):
  return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _record_embeddings(monkeypatch, text_proj):
  seen = []
  forward = text_proj.forward
  monkeypatch.setattr(text_proj, "forward", lambda **kw: seen.append(kw["image_embeddings"].numpy()) or forward(**kw))
  return seen


def test_generate_from_prompts_equals_unclip_pipeline(folders, monkeypatch):
  import torch

  pipe = P.Pipeline.load(folders["text_only"], log=lambda msg: None)
  settings = pipe.settings()
  assert settings["prior"].clip_x0 == 5.0 and settings["decoder"].guidance_scale == 8.0  # from the scheduler configs
  prompts, seeds = ["a red cube", "two dogs!"], [3, 4]
  ours = pipe.generate(prompts, seeds, settings)

  keys = P.image_keys(seeds)
  d, s, big = karlo_folders.WIDTH, karlo_folders.DECODER_SIZE, karlo_folders.SR_SIZE
  prior_x, prior_steps = drawn_noise(keys, P.PRIOR_KEY, 25, (d,))
  _, dec_steps = drawn_noise(keys, P.DECODER_KEY, 25, (s, s, 3))
  sr_x, sr_steps = drawn_noise(keys, P.SR_KEY, 7, (big, big, 3))
  _feed_noise(monkeypatch, {d: [torch.tensor(a) for a in prior_steps], s: [_nchw(torch, a) for a in dec_steps],
                            big: [_nchw(torch, a) for a in sr_steps]})
  ref_pipe = folders["pipe"]
  embeds = _record_embeddings(monkeypatch, ref_pipe.text_proj)
  with torch.no_grad():
    ref = ref_pipe(prompt=prompts, prior_latents=torch.tensor(prior_x),
                   decoder_latents=_nchw(torch, pipe.decoder_noise(keys)), super_res_latents=_nchw(torch, sr_x),
                   output_type="np").images
  emb_ref = embeds[0]
  emb_err = np.abs(ours["image_embeds"] - emb_ref).max() / np.abs(emb_ref).max()
  got = ours["images"].astype(np.float32) / 255
  assert ref.shape == got.shape == (2, big, big, 3)
  err = np.abs(got - ref).max()
  print(f"measured: generate image embeddings {emb_err:.2e} (relative), images {err:.2e}")
  assert emb_err <= EMBED_RTOL, emb_err
  assert err <= IMAGE_ATOL, err
  assert np.abs(got[0] - got[1]).max() > 0.05  # the two prompts / seeds give different images


def test_variations_equal_image_variation_pipeline(folders, monkeypatch):
  import PIL.Image
  import torch

  pipe = P.Pipeline.load(folders["full"], log=lambda msg: None)
  n = karlo_folders.CLIP_IMAGE
  images = np.random.default_rng(0).integers(0, 256, (2, n, n, 3), dtype=np.uint8)
  seeds = [5, 6]
  embeds = pipe.encode_images(images)
  settings = pipe.settings()
  ours = pipe.decode_embeddings(embeds, seeds, settings)

  keys = P.image_keys(seeds)
  s, big = karlo_folders.DECODER_SIZE, karlo_folders.SR_SIZE
  _, dec_steps = drawn_noise(keys, P.DECODER_KEY, 25, (s, s, 3))
  sr_x, sr_steps = drawn_noise(keys, P.SR_KEY, 7, (big, big, 3))
  _feed_noise(monkeypatch, {s: [_nchw(torch, a) for a in dec_steps], big: [_nchw(torch, a) for a in sr_steps]})
  ref_pipe = folders["variations_pipe"]
  seen = _record_embeddings(monkeypatch, ref_pipe.text_proj)
  with torch.no_grad():
    ref = ref_pipe(image=[PIL.Image.fromarray(im) for im in images], decoder_latents=_nchw(torch, pipe.decoder_noise(keys)),
                   super_res_latents=_nchw(torch, sr_x), output_type="np").images
  emb_err = np.abs(embeds - seen[0]).max() / np.abs(seen[0]).max()
  got = ours["images"].astype(np.float32) / 255
  err = np.abs(got - ref).max()
  print(f"measured: variations image embeddings {emb_err:.2e} (relative), images {err:.2e}")
  assert emb_err <= IMAGE_EMBED_RTOL, emb_err
  assert err <= IMAGE_ATOL, err
  assert np.abs(got[0] - got[1]).max() > 0.05


def test_text_only_pipeline_says_variations_need_an_image_encoder(folders):
  pipe = P.Pipeline.load(folders["text_only"], log=lambda msg: None)
  assert not pipe.clip_config.image_tower
  n = pipe.clip_config.image_size
  with pytest.raises(UserError, match="image encoder"):
    pipe.encode_images(np.zeros((1, n, n, 3), np.uint8))


def _stage_leaves(out):
  info = P.read_pipeline(out)
  from unclip_jax.pipeline.folder import STAGE_KINDS, load_stage_tree

  return {name: [np.asarray(x) for x in jax.tree.leaves(
      load_stage_tree(path, STAGE_KINDS[name], info["stages"][name], ema=False, log=lambda m: None)[0])]
      for name, path in info["paths"].items()}


def _rewrite(src, dst, write):
  """Copies the Karlo folder, rewriting every component's weights with `write(folder, state, kind)`."""
  from unclip_jax.convert.weights import DIFFUSERS, TRANSFORMERS, WeightFiles

  shutil.copytree(src, dst)
  for name in ("text_encoder", "prior", "text_proj", "decoder", "super_res_first", "super_res_last"):
    kind = "transformers" if name == "text_encoder" else "diffusers"
    files = WeightFiles(dst / name, TRANSFORMERS if kind == "transformers" else DIFFUSERS)
    state = files.load()
    files.path.unlink()
    write(dst / name, state, kind)


def _bin(folder, state, kind):
  import torch

  name = "pytorch_model.bin" if kind == "transformers" else "diffusion_pytorch_model.bin"
  torch.save({k: torch.tensor(v) for k, v in state.items()}, folder / name)


def _fp16(folder, state, kind):
  from safetensors.numpy import save_file

  name = "model.fp16.safetensors" if kind == "transformers" else "diffusion_pytorch_model.fp16.safetensors"
  save_file({k: v.astype(np.float16) for k, v in state.items()}, str(folder / name))


def _sharded(folder, state, kind):
  from safetensors.numpy import save_file

  base = "model" if kind == "transformers" else "diffusion_pytorch_model"
  keys = sorted(state)
  weight_map = {}
  for i, part in enumerate((keys[::2], keys[1::2])):
    file = f"{base}-{i + 1:05d}-of-00002.safetensors"
    save_file({k: state[k] for k in part}, str(folder / file))
    weight_map.update(dict.fromkeys(part, file))
  (folder / f"{base}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["bin", "fp16", "sharded"])
def test_other_weight_layouts_convert_to_the_same_parameters(folders, tmp_path, layout):
  write = {"bin": _bin, "fp16": _fp16, "sharded": _sharded}[layout]
  _rewrite(folders["karlo"], tmp_path / "src", write)
  out = tmp_path / "out"
  convert_main(["karlo", str(tmp_path / "src"), "--out", str(out)])
  want, got = _stage_leaves(folders["text_only"]), _stage_leaves(out)
  assert set(want) == set(got) == {"clip", "prior", "decoder", "sr_64_256", "sr_64_256_last"}
  for stage in want:
    for a, b in zip(want[stage], got[stage], strict=True):
      if layout == "fp16" and a.ndim:  # the fp16 files hold the float32 weights rounded to half precision
        # (CLIP's logit_scale, the one scalar, is not in the files: the converter sets it)
        a = a.astype(np.float16).astype(np.float32)
      np.testing.assert_array_equal(a, b, err_msg=stage)


def _run_cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-m", "unclip_jax.convert", "karlo", *map(str, args)], capture_output=True,
                        text=True, env={"JAX_PLATFORMS": "cpu", **env})
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  return lines[0]


def test_tokenizer_with_other_ids_exits_2_and_writes_nothing(folders, tmp_path):
  src = tmp_path / "src"
  shutil.copytree(folders["karlo"], src)
  path = src / "tokenizer" / "tokenizer.json"
  data = json.loads(path.read_text())
  vocab = data["model"]["vocab"]
  vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]
  path.write_text(json.dumps(data))
  line = _run_cli(src, "--out", tmp_path / "out")
  assert "tokenizer.json" in line and "'dog</w>'" in line, line  # the first token (by id) that differs
  assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_vocab_json_and_merges_txt_tokenizer_is_read(folders, tmp_path):
  from unclip_jax.convert.hf_tokenizer import check_tokenizer

  folder = karlo_folders.tokenizer_files(tmp_path / "tok")
  assert "vocab.json matches" in check_tokenizer(folder, karlo_folders.CONTEXT)
  lines = (folder / "merges.txt").read_text().split("\n")
  lines[1], lines[2] = lines[2], lines[1]
  (folder / "merges.txt").write_text("\n".join(lines))
  with pytest.raises(UserError, match=r"merges\.txt: merge 0"):
    check_tokenizer(folder, karlo_folders.CONTEXT)


def test_missing_component_and_misshaped_text_encoder_tensor(folders, tmp_path):
  from safetensors.numpy import load_file, save_file

  src = tmp_path / "src"
  shutil.copytree(folders["karlo"], src)
  shutil.rmtree(src / "text_encoder")
  line = _run_cli(src, "--out", tmp_path / "out")
  assert "text_encoder" in line and "missing" in line, line

  shutil.copytree(folders["karlo"] / "text_encoder", src / "text_encoder")
  path = src / "text_encoder" / "model.safetensors"
  state = load_file(str(path))
  key = "text_model.encoder.layers.0.mlp.fc1.weight"
  state[key] = state[key][:-1]
  save_file(state, str(path))
  with pytest.raises(UserError, match=r"model\.safetensors.*c_fc\.weight has shape \(95, 24\)"):
    convert_main(["karlo", str(src), "--out", str(tmp_path / "out")])
  assert not (tmp_path / "out").exists()


def test_variations_folder_must_share_the_decoder(folders, tmp_path):
  from safetensors.numpy import load_file, save_file

  other = tmp_path / "variations"
  shutil.copytree(folders["variations"], other)
  path = other / "decoder" / "diffusion_pytorch_model.safetensors"
  state = load_file(str(path))
  state["conv_in.bias"] = state["conv_in.bias"] + 1
  save_file(state, str(path))
  with pytest.raises(UserError, match=r"conv_in\.bias.*differs"):
    convert_main(["karlo", str(folders["karlo"]), "--out", str(tmp_path / "out"), "--variations", str(other)])
  assert not (tmp_path / "out").exists()


def test_sample_cli_on_the_converted_folders(folders, tmp_path):
  """The issue's failing command: `sample --checkpoint OUT` now draws; `variations` on a text-only CLIP is
  one clear error (the --variations folder's variations are tested through the API above: the CLI
  compiles three more programs)."""
  import PIL.Image

  from unclip_jax import sample

  steps = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2"]
  out = ["--checkpoint", str(folders["text_only"]), "--out", str(tmp_path / "t")]
  assert sample.main(["--prompt", "a red cube", *out, *steps]) == 0
  assert len(list((tmp_path / "t").glob("0*.png"))) == 1
  n = karlo_folders.CLIP_IMAGE
  image = tmp_path / "in.png"
  PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (n, n, 3), dtype=np.uint8)).save(image)
  with pytest.raises(UserError, match="text encoder only.*image encoder"):
    sample.main(["variations", str(image), "--checkpoint", str(folders["text_only"]), "--out", str(tmp_path / "v")])
  assert not (tmp_path / "v").exists()
