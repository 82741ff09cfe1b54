"""The diffusion prior: parity with diffusers' PriorTransformer on random weights, and its stats collection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.convert.karlo import convert_state_dict
from unclip_jax.models.prior import PriorTransformer, init_variables, normalize_embeddings, post_process_latents

CFG = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=12, num_embeddings=5)


def _inputs(rng, b):
  x = rng.normal(size=(b, 12)).astype(np.float32)
  pe = rng.normal(size=(b, 12)).astype(np.float32)
  enc = rng.normal(size=(b, 5, 12)).astype(np.float32)
  mask = np.ones((b, 5), bool)
  mask[:, 3:] = False
  mask[0, 2] = False  # rows differ in padding length
  return x, pe, enc, mask


@pytest.fixture(scope="module")
def random_vars():
  model = PriorTransformer(**CFG)
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, jnp.float32), abstract["params"])
  stats = {"clip_mean": jnp.linspace(-1, 1, 12), "clip_std": jnp.linspace(0.5, 2, 12)}
  return model, {"params": params, "stats": stats}


def test_stats_are_a_separate_collection(random_vars):
  model, variables = random_vars
  fresh = init_variables(PriorTransformer(**{**CFG, "num_layers": 0}), jax.random.key(1))
  assert set(fresh) == {"params", "stats"}
  assert "clip_mean" not in fresh["params"] and "clip_std" not in fresh["params"]
  np.testing.assert_array_equal(fresh["stats"]["clip_std"], np.ones(12))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12)), jnp.float32)
  z = model.apply(variables, x, method=PriorTransformer.normalize)
  np.testing.assert_allclose(model.apply(variables, z, method=PriorTransformer.post_process_latents), x, atol=1e-6)
  np.testing.assert_allclose(post_process_latents(variables["stats"], normalize_embeddings(variables["stats"], x)),
                             x, atol=1e-6)
  assert not np.allclose(z, x)


def test_padding_tokens_are_ignored_and_attention_is_causal(random_vars):
  model, variables = random_vars
  x, pe, enc, mask = _inputs(np.random.default_rng(1), 2)
  f = jax.jit(lambda *a: model.apply(variables, *a))
  base = f(x, jnp.array([10, 20]), pe, enc, mask)
  enc2 = enc.copy()
  enc2[:, 3:] += 5.0  # masked tokens
  np.testing.assert_allclose(f(x, jnp.array([10, 20]), pe, enc2, mask), base, atol=1e-6)
  enc3 = enc.copy()
  enc3[:, 1] += 5.0  # a real token changes the output
  assert np.abs(f(x, jnp.array([10, 20]), pe, enc3, mask) - base).max() > 1e-3


def test_bf16_compute_keeps_float32_params(random_vars):
  _, variables = random_vars
  model16 = PriorTransformer(**CFG, dtype=jnp.bfloat16, remat=True)
  abstract = jax.eval_shape(lambda: init_variables(model16, jax.random.key(0)))
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(abstract))
  x, pe, enc, mask = _inputs(np.random.default_rng(2), 2)
  args = (x, jnp.array([5, 6]), pe, enc, mask)
  ref = jax.jit(lambda v: PriorTransformer(**CFG).apply(v, *args))(variables)
  out = jax.jit(lambda v: model16.apply(v, *args))(variables)
  assert out.dtype == jnp.float32
  assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) < 5e-2


@pytest.mark.peers
def test_parity_with_diffusers_prior_transformer():
  from tests.peers import require

  diffusers = require("diffusers")
  import torch

  torch.manual_seed(0)
  tm = diffusers.PriorTransformer(**CFG).eval()
  with torch.no_grad():
    for p in tm.parameters():
      p.normal_(0, 0.3)
    tm.clip_std.abs_().add_(0.5)
  model = PriorTransformer(**CFG)
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
  variables = convert_state_dict({k: v.numpy() for k, v in tm.state_dict().items()}, abstract)
  f = jax.jit(lambda *a: model.apply(variables, *a))
  rng = np.random.default_rng(0)
  for b, t in [(1, 0), (2, 500), (3, 999)]:
    x, pe, enc, mask = _inputs(rng, b)
    with torch.no_grad():
      ref = tm(torch.tensor(x), torch.tensor(t), torch.tensor(pe), torch.tensor(enc),
               attention_mask=torch.tensor(mask)).predicted_image_embedding
      ref_pp = tm.post_process_latents(ref).numpy()
      ref = ref.numpy()
    out = np.asarray(f(x, jnp.full((b,), t), pe, enc, mask))
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4, (b, t)
    pp = np.asarray(model.apply(variables, out, method=PriorTransformer.post_process_latents))
    assert np.abs(pp - ref_pp).max() / np.abs(ref_pp).max() <= 1e-4
