"""The per-device contrastive losses on 8 devices equal the single-device loss over the global batch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from unclip_jax.train import contrastive

N_DEV, LOCAL, FEAT, DIM = 8, 2, 6, 4
GLOBAL = N_DEV * LOCAL


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _problem(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  xi = jax.random.normal(k[0], (GLOBAL, FEAT))
  xt = jax.random.normal(k[1], (GLOBAL, FEAT))
  params = {"wi": jax.random.normal(k[2], (FEAT, DIM)), "wt": jax.random.normal(k[3], (FEAT, DIM)),
            "logit_scale": jnp.array(math.log(1 / 0.07)), "logit_bias": jnp.array(-2.0)}
  return params, xi, xt


def _loss(kind):
  def fn(params, xi, xt, axis_name=None):
    out = {"image_embeds": xi @ params["wi"], "text_embeds": xt @ params["wt"],
           "logit_scale": params["logit_scale"], "logit_bias": params["logit_bias"]}
    return contrastive.contrastive_loss(kind, out, axis_name)
  return fn


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_pmap_loss_and_grads_match_single_device(kind):
  assert jax.device_count() == N_DEV
  loss_fn = _loss(kind)
  params, xi, xt = _problem()
  ref_loss, ref_grads = jax.value_and_grad(loss_fn)(params, xi, xt)
  ref_emb = jax.grad(lambda a, b: loss_fn(params, a, b), argnums=(0, 1))(xi, xt)

  def per_device(p, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(p, a, b, "d")
    emb = jax.grad(lambda a, b: loss_fn(p, a, b, "d"), argnums=(0, 1))(a, b)
    return loss, jax.lax.pmean(grads, "d"), emb

  loss, grads, emb = jax.pmap(per_device, axis_name="d", in_axes=(None, 0, 0))(
      params, xi.reshape(N_DEV, LOCAL, FEAT), xt.reshape(N_DEV, LOCAL, FEAT))
  assert np.allclose(loss, loss[0])  # the same value on every device
  assert _rel_err(loss[0], ref_loss) <= 1e-6
  for name in ref_grads:
    if not (kind == "softmax" and name == "logit_bias"):  # the softmax loss has no bias
      assert np.abs(np.asarray(ref_grads[name])).max() > 0
    assert _rel_err(grads[name][0], ref_grads[name]) <= 1e-6, name
  # Under pmap a device's embedding gradient is that of the sum of the N per-device losses.
  for got, want in zip(emb, ref_emb):
    assert _rel_err(np.asarray(got).reshape(GLOBAL, FEAT) / N_DEV, want) <= 1e-6


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_shard_map_loss_and_grads_match_single_device(kind):
  loss_fn = _loss(kind)
  params, xi, xt = _problem(1)
  ref_loss, ref_grads = jax.value_and_grad(loss_fn)(params, xi, xt)
  ref_emb = jax.grad(lambda a, b: loss_fn(params, a, b), argnums=(0, 1))(xi, xt)
  mesh = jax.make_mesh((N_DEV,), ("d",))
  xi_s, xt_s = (jax.device_put(x, NamedSharding(mesh, P("d"))) for x in (xi, xt))

  def per_device(p, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(p, a, b, "d")
    emb = jax.grad(lambda a, b: loss_fn(p, a, b, "d"), argnums=(0, 1))(a, b)
    return loss, grads, emb

  step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("d"), P("d")),
                               out_specs=(P(), P(), P("d"))))
  loss, grads, emb = step(params, xi_s, xt_s)
  assert _rel_err(loss, ref_loss) <= 1e-6
  for name in ref_grads:
    assert _rel_err(grads[name], ref_grads[name]) <= 1e-6, name
  for got, want in zip(emb, ref_emb):
    assert _rel_err(got, want) <= 1e-6


def test_softmax_loss_properties():
  e = jnp.eye(4, 8)
  # Perfectly aligned pairs at the maximum temperature: near-zero loss; mismatched pairs: large loss.
  assert float(contrastive.clip_softmax_loss(e, e, 10.0)) < 1e-6  # log-scale 10 is clamped to ln 100
  assert float(contrastive.clip_softmax_loss(e, e[::-1], math.log(100))) > 50
  uniform = contrastive.clip_softmax_loss(jnp.ones((4, 8)), jnp.ones((4, 8)), 0.0)
  assert abs(float(uniform) - math.log(4)) < 1e-6
  # The clamp inside the loss: any log-scale above ln 100 gives the same loss.
  x, y = jax.random.normal(jax.random.key(0), (2, 4, 8))
  assert float(contrastive.clip_softmax_loss(x, y, 7.0)) == float(contrastive.clip_softmax_loss(x, y, math.log(100)))


def test_clamp_logit_scale_helper():
  params = {"logit_scale": jnp.array(5.3), "w": jnp.ones(2)}
  clamped = contrastive.clamp_logit_scale(params)
  assert float(clamped["logit_scale"]) == pytest.approx(math.log(100))
  assert float(contrastive.clamp_logit_scale({"logit_scale": jnp.array(-1.0)})["logit_scale"]) == 0.0
  assert float(params["logit_scale"]) == pytest.approx(5.3)  # input left alone
  assert clamped["w"] is params["w"]


def test_unknown_loss_and_missing_bias_are_errors():
  out = {"image_embeds": jnp.ones((2, 3)), "text_embeds": jnp.ones((2, 3)), "logit_scale": jnp.array(1.0)}
  with pytest.raises(ValueError, match="logit bias"):
    contrastive.contrastive_loss("sigmoid", out)
  with pytest.raises(ValueError, match="unknown"):
    contrastive.contrastive_loss("hinge", out)


def _negatives_problem(seed=2):
  k = jax.random.split(jax.random.key(seed), 2)
  neg = jax.random.normal(k[0], (GLOBAL, DIM))
  valid = jax.random.bernoulli(k[1], 0.6, (GLOBAL,)).at[0].set(True).at[1].set(False)
  return neg, valid


def _numpy_losses(img, txt, neg, valid, scale, bias):
  """NegCLIP's losses written out in float64: images score against all captions plus the valid negatives."""
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  img, txt, neg, valid = unit(img), unit(txt), unit(neg), np.asarray(valid)
  n = len(img)
  per_image = np.concatenate([scale * img @ txt.T, scale * img @ neg[valid].T], axis=1)
  per_text = scale * txt @ img.T
  ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(n), np.arange(n)])  # noqa: E731
  softmax = 0.5 * (ce(per_image) + ce(per_text))
  logits = np.concatenate([scale * img @ txt.T, scale * img @ neg[valid].T], axis=1) + bias
  signs = -np.ones_like(logits)
  signs[np.arange(n), np.arange(n)] = 1.0
  sigmoid = -np.sum(np.log(1 / (1 + np.exp(-signs * logits)))) / n
  return {"softmax": softmax, "sigmoid": sigmoid}


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_hard_negatives_add_wrong_captions_to_every_image(kind):
  """With hard negatives the loss is NegCLIP's (checked against float64 numpy), rows without one add
  nothing, the loss grows (the negatives are extra wrong answers), and the gradients stay finite."""
  params, xi, xt = _problem(3)
  neg, valid = _negatives_problem()
  img, txt = xi @ params["wi"], xt @ params["wt"]
  out = {"image_embeds": img, "text_embeds": txt, "logit_scale": params["logit_scale"],
         "logit_bias": params["logit_bias"]}
  got = contrastive.contrastive_loss(kind, out, negative_embeds=neg, negative_valid=valid)
  want = _numpy_losses(img, txt, neg, valid, math.exp(float(params["logit_scale"])), float(params["logit_bias"]))[kind]
  assert _rel_err(got, want) <= 1e-5
  plain = contrastive.contrastive_loss(kind, out)
  assert float(got) > float(plain)
  none = contrastive.contrastive_loss(kind, out, negative_embeds=neg, negative_valid=jnp.zeros((GLOBAL,), bool))
  assert _rel_err(none, plain) <= 1e-6
  grads = jax.grad(lambda n: contrastive.contrastive_loss(kind, out, negative_embeds=n, negative_valid=valid))(neg)
  assert np.isfinite(np.asarray(grads)).all()
  assert np.abs(np.asarray(grads)[~np.asarray(valid)]).max() == 0  # a missing negative gets no gradient
  assert np.abs(np.asarray(grads)[np.asarray(valid)]).max() > 0


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_hard_negatives_sharded_match_single_device(kind):
  """Every device's images meet every device's negatives: the shard_map loss equals the global one."""
  params, xi, xt = _problem(4)
  neg, valid = _negatives_problem(5)

  def loss_fn(p, a, b, n, v, axis_name=None):
    out = {"image_embeds": a @ p["wi"], "text_embeds": b @ p["wt"], "logit_scale": p["logit_scale"],
           "logit_bias": p["logit_bias"]}
    return contrastive.contrastive_loss(kind, out, axis_name, negative_embeds=n, negative_valid=v)

  ref_loss, ref_grads = jax.value_and_grad(loss_fn)(params, xi, xt, neg, valid)
  mesh = jax.make_mesh((N_DEV,), ("d",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("d")))  # noqa: E731
  step = jax.jit(jax.shard_map(lambda p, a, b, n, v: jax.value_and_grad(loss_fn)(p, a, b, n, v, "d"), mesh=mesh,
                               in_specs=(P(), P("d"), P("d"), P("d"), P("d")), out_specs=(P(), P())))
  loss, grads = step(params, shard(xi), shard(xt), shard(neg), shard(valid))
  assert _rel_err(loss, ref_loss) <= 1e-6
  for name in ("wi", "wt", "logit_scale"):
    assert _rel_err(grads[name], ref_grads[name]) <= 1e-5, name


def test_flipped_image_loss_rewards_telling_an_image_from_its_mirror_and_shards_like_one_device():
  k = jax.random.split(jax.random.key(7), 3)
  img, mir = jax.random.normal(k[0], (GLOBAL, DIM)), jax.random.normal(k[1], (GLOBAL, DIM))
  valid = jax.random.bernoulli(k[2], 0.6, (GLOBAL,)).at[0].set(True)
  scale = jnp.array(math.log(10.0))
  # Captions that match their image (and twins their mirror) against captions that match the wrong one.
  right, right_acc = contrastive.flipped_image_loss(img, mir, img, mir, scale, valid)
  wrong, wrong_acc = contrastive.flipped_image_loss(img, mir, mir, img, scale, valid)
  assert float(right_acc) == 1.0 and float(wrong_acc) == 0.0 and float(right) < 0.5 < float(wrong)
  # Rows without a mirror count for nothing.
  garbage = jnp.where(valid[:, None], mir, 100.0 * img)
  assert _rel_err(contrastive.flipped_image_loss(img, garbage, img, garbage, scale, valid)[0],
                  contrastive.flipped_image_loss(img, mir, img, mir, scale, valid)[0]) <= 1e-6
  # Per device over shards of the global batch: the same loss and image gradients as on one device.
  txt, neg = img + 0.5 * mir, mir + 0.3 * img
  ref_loss, ref_grad = jax.value_and_grad(
      lambda a: contrastive.flipped_image_loss(a, mir, txt, neg, scale, valid)[0])(img)
  mesh = jax.make_mesh((N_DEV,), ("d",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("d")))  # noqa: E731

  def per_device(a, m, t, n, v):
    f = lambda a: contrastive.flipped_image_loss(a, m, t, n, scale, v, "d")[0]  # noqa: E731
    return jax.value_and_grad(f)(a)

  step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("d"),) * 5, out_specs=(P(), P("d"))))
  loss, grad = step(shard(img), shard(mir), shard(txt), shard(neg), shard(valid))
  assert _rel_err(loss, ref_loss) <= 1e-6 and _rel_err(grad, ref_grad) <= 1e-5


def test_near_miss_loss_is_the_mean_logistic_preference_over_valid_rows_and_shards_like_one_device():
  k = jax.random.split(jax.random.key(8), 4)
  img, near, txt = (jax.random.normal(k[i], (GLOBAL, DIM)) for i in range(3))
  valid = jax.random.bernoulli(k[3], 0.6, (GLOBAL,)).at[0].set(True)
  scale = jnp.array(math.log(10.0))
  loss, accuracy = contrastive.near_miss_loss(img, near, txt, scale, valid)
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  own, missed = (np.sum(unit(txt) * unit(x), -1) for x in (img, near))
  v = np.asarray(valid)
  expected = np.mean(np.logaddexp(0.0, 10.0 * (missed - own))[v])
  assert _rel_err(loss, expected) <= 1e-5 and float(accuracy) == pytest.approx(np.mean((own > missed)[v]))
  # Captions that are their image's own embedding always win; rows without a near miss count for nothing.
  assert float(contrastive.near_miss_loss(img, near, img, scale, valid)[1]) == 1.0
  garbage = jnp.where(valid[:, None], near, -100.0 * txt)
  assert _rel_err(contrastive.near_miss_loss(img, garbage, txt, scale, valid)[0], loss) <= 1e-6
  ref_loss, ref_grad = jax.value_and_grad(lambda a: contrastive.near_miss_loss(a, near, txt, scale, valid)[0])(img)
  mesh = jax.make_mesh((N_DEV,), ("d",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("d")))  # noqa: E731

  def per_device(a, m, t, v):
    return jax.value_and_grad(lambda a: contrastive.near_miss_loss(a, m, t, scale, v, "d")[0])(a)

  step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("d"),) * 4, out_specs=(P(), P("d"))))
  sharded_loss, grad = step(shard(img), shard(near), shard(txt), shard(valid))
  assert _rel_err(sharded_loss, ref_loss) <= 1e-6 and _rel_err(grad, ref_grad) <= 1e-5
