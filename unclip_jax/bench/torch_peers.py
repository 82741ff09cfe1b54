"""The PyTorch side of `python -m unclip_jax.bench peers`: the peer models and the work they time.

The peers are the libraries our models are converted from: open_clip (CLIP), diffusers' PriorTransformer,
UNet2DConditionModel + UnCLIPTextProjModel (decoder), UNet2DModel (super-resolution), their
UnCLIPScheduler and UnCLIPPipeline. Each piece of work mirrors what ours does per call:
  * train steps: forward, the stage's loss (prior: MSE on x0; decoder: ε-MSE plus the learned-variance
    KL term with the mean frozen), backward, global-norm clipping at 1, AdamW (no decay on 1-D
    parameters), EMA of the weights; the caption / image-embedding dropout of classifier-free guidance;
  * sampling: diffusers' own loops (copied from `UnCLIPPipeline.__call__`) with guidance on a doubled
    batch; the pipeline row calls `UnCLIPPipeline` itself, with open_clip as its text encoder.
Modes (`Peer`): eager or `torch.compile` (in place, `Module.compile()`), a thread count on CPU; on a GPU
bf16 autocast. PyPI's CUDA torchvision next to a CPU torch cannot register its C++ ops; `import_peer`
lets those registrations fail quietly (the pure-Python parts diffusers and open_clip use still work).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import types
from typing import Any, Callable

import numpy as np

from unclip_jax.errors import UserError

EXTRA_HINT = "bench peers needs the parity peers: pip install torch diffusers open_clip_torch (the `peers` extra)"


def _tolerant(register):
  def patched(op, *args, **kwargs):
    if not (isinstance(op, str) and op.startswith("torchvision::")):
      return register(op, *args, **kwargs)
    try:
      result = register(op, *args, **kwargs)
    except RuntimeError:
      return lambda fn: fn
    if callable(result) and not args and not kwargs:  # decorator form: the error comes when applied
      def decorator(fn):
        try:
          return result(fn)
        except RuntimeError:
          return fn
      return decorator
    return result
  return patched


def import_torchvision():
  """torchvision (or None if not installed), imported with its missing-operator registrations tolerated
  (a CPU torch with a mismatched torchvision otherwise fails on `torchvision::nms`); the parity tests use it too."""
  import torch.library as torch_library

  names = [n for n in ("register_fake", "register_autograd", "register_kernel", "impl_abstract")
           if hasattr(torch_library, n)]
  originals = {n: getattr(torch_library, n) for n in names}
  for n in names:
    setattr(torch_library, n, _tolerant(originals[n]))
  try:
    import torchvision
  except ImportError:
    torchvision = None
  finally:
    for n in names:
      setattr(torch_library, n, originals[n])
  return torchvision


def import_peer(name: str):
  """torch, diffusers, open_clip (or a submodule), with the torchvision work-around; `UserError` if missing."""
  try:
    import torch  # noqa: F401
  except ImportError:
    raise UserError(EXTRA_HINT) from None
  if name != "torch":
    import_torchvision()
  try:
    module = importlib.import_module(name)
  except ImportError as e:
    raise UserError(f"{EXTRA_HINT} ({e})") from None
  if name == "diffusers":
    module.utils.logging.set_verbosity_error()  # UnCLIPPipeline's deprecation notice on every construction
  return module


class Peer:
  """How PyTorch runs: device, `mode` ("eager" or "compile"), CPU `threads`, and its precision: bf16
  autocast on a GPU, or (`half`, for inference) the weights and inputs in float16, as diffusers' pipelines
  run with `torch_dtype=torch.float16`."""

  default_threads: int | None = None  # torch's own CPU thread count, read once before any change

  def __init__(self, mode: str = "eager", threads: int | None = None, half: bool = False):
    self.torch = torch = import_peer("torch")
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if Peer.default_threads is None:
      Peer.default_threads = torch.get_num_threads()
    self.mode, self.threads, self.half = mode, threads or Peer.default_threads, half

  @property
  def gpu(self) -> bool:
    return self.device.type == "cuda"

  def describe(self) -> str:
    what = self.mode + (" fp16" if self.half else " bf16 autocast" if self.gpu else "")
    if not self.gpu:
      what += f", {self.threads} thread{'s' if self.threads > 1 else ''}"
    return f"torch {self.torch.__version__} {self.device.type} {what}"

  def activate(self) -> None:
    """Sets the CPU thread count (a process-wide torch setting) before this peer runs."""
    if not self.gpu and self.torch.get_num_threads() != self.threads:
      self.torch.set_num_threads(self.threads)

  def autocast(self):
    if self.gpu and not self.half:
      return self.torch.autocast("cuda", dtype=self.torch.bfloat16)
    return contextlib.nullcontext()

  def sync(self) -> None:
    if self.gpu:
      self.torch.cuda.synchronize()

  def reset_peak(self) -> None:
    if self.gpu:
      self.torch.cuda.reset_peak_memory_stats(self.device)

  def peak_bytes(self) -> int | None:
    """The GPU's peak bytes allocated by torch since `reset_peak` (None on a CPU, where torch keeps none)."""
    return int(self.torch.cuda.max_memory_allocated(self.device)) if self.gpu else None

  def prepare(self, *modules) -> None:
    """Moves `modules` to the device in this peer's weight dtype (float16 or float32) and compiles them in
    place (mode "compile") or undoes that."""
    for m in modules:
      m.to(self.device, self.torch.float16 if self.half else self.torch.float32)
      if self.mode == "compile":
        m.compile()
      else:
        m._compiled_call_impl = None  # noqa: SLF001 - what Module.compile() sets

  def tensor(self, a, dtype=None):
    """A copy of `a` on the device (writable, owned); floating arrays in float16 for a `half` peer."""
    a = np.array(a)
    if dtype is None and self.half and np.issubdtype(a.dtype, np.floating):
      dtype = self.torch.float16
    return self.torch.as_tensor(a, device=self.device, dtype=dtype)


# ---------------------------------------------------------------------------------------------- models

def random_init(module, seed: int) -> None:
  """Deterministic random weights: kernels N(0, 1/fan_in), 1-D tensors 0 (norm scales 1) + N(0, 0.02²).
  (diffusers zero-initialises some output layers; cost does not depend on the values, finiteness does.)"""
  torch = import_peer("torch")
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim <= 1:
        owner = name.rpartition(".")[0].split(".")[-1]
        base = 1.0 if name.endswith("weight") and ("norm" in owner or owner.startswith("ln_")) else 0.0
        p.copy_(base + 0.02 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(1, int(np.prod(p.shape[1:])))))


def build_clip(spec: dict, seed: int = 0):
  open_clip = import_peer("open_clip")
  model = open_clip.CLIP(embed_dim=spec["embed_dim"], quick_gelu=spec["quick_gelu"], vision_cfg=spec["vision"],
                         text_cfg=spec["text"])
  random_init(model, seed)
  return model.eval()


def build_prior(spec: dict, seed: int = 0):
  diffusers = import_peer("diffusers")
  model = diffusers.PriorTransformer(**spec)
  random_init(model, seed)
  torch = import_peer("torch")
  with torch.no_grad():
    model.clip_std.abs_().add_(0.5)
  return model


def build_decoder(spec: dict, seed: int = 0):
  diffusers = import_peer("diffusers")
  from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

  unet, proj = diffusers.UNet2DConditionModel(**spec["unet"]), UnCLIPTextProjModel(**spec["text_proj"])
  random_init(unet, seed)
  random_init(proj, seed + 1)
  return unet, proj


def build_upsampler(spec: dict, seed: int = 0):
  diffusers = import_peer("diffusers")
  model = diffusers.UNet2DModel(**spec)
  random_init(model, seed)
  return model


def build_conv_levels(levels: list[tuple[int, int]], seed: int = 0):
  """The decoder's 3x3 convolutions without the rest of the UNet: per level (resolution, channels) the pair
  of a residual block, conv → SiLU → conv → SiLU, channels in = out. Forward on a list of NCHW inputs (one
  per level) returns the sum of the levels' mean squares, a scalar to differentiate."""
  torch = import_peer("torch")

  class ConvLevels(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.convs = torch.nn.ModuleList(torch.nn.Conv2d(c, c, 3, padding=1) for _, c in levels for _ in range(2))

    def forward(self, xs):
      total = 0.0
      for i, x in enumerate(xs):
        for conv in self.convs[2 * i: 2 * i + 2]:
          x = torch.nn.functional.silu(conv(x))
        total = total + x.square().mean()
      return total

  model = ConvLevels()
  random_init(model, seed)
  return model


def state_dict(module) -> dict[str, np.ndarray]:
  return {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------ training

class Schedule:
  """ᾱ_t and the posterior coefficients of a training process, as torch tensors (from our numpy ones)."""

  def __init__(self, peer: Peer, process):
    t = lambda a: peer.tensor(np.asarray(a, np.float32))  # noqa: E731
    self.T = int(process.num_timesteps)
    self.sqrt_abar, self.sqrt_1m_abar = t(np.sqrt(process.alphas_cumprod)), t(np.sqrt(1 - process.alphas_cumprod))
    self.coef1, self.coef2 = t(process.posterior_mean_coef1), t(process.posterior_mean_coef2)
    self.post_logvar = t(process.posterior_log_variance_clipped)
    self.log_beta = t(np.log(process.betas))
    self.recip_abar, self.recipm1_abar = t(np.sqrt(1 / process.alphas_cumprod)), t(np.sqrt(1 / process.alphas_cumprod - 1))


def _at(a, t, like):
  return a[t].reshape((-1,) + (1,) * (like.ndim - 1))


def hybrid_loss(torch, s: Schedule, out, x0, x_t, t, noise):
  """ε-MSE plus the KL between the true posterior and the model's (learned-range variance, mean frozen),
  in bits per dimension, weighted T/1000 (our `training_losses(loss="hybrid")`, the t = 0 NLL as a KL)."""
  eps, v = out[:, :3], out[:, 3:]
  mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
  frac = (v + 1) / 2
  model_logvar = frac * _at(s.log_beta, t, x_t) + (1 - frac) * _at(s.post_logvar, t, x_t)
  pred_x0 = (_at(s.recip_abar, t, x_t) * x_t - _at(s.recipm1_abar, t, x_t) * eps.detach()).clamp(-1, 1)
  model_mean = _at(s.coef1, t, x_t) * pred_x0 + _at(s.coef2, t, x_t) * x_t
  true_mean = _at(s.coef1, t, x_t) * x0 + _at(s.coef2, t, x_t) * x_t
  true_logvar = _at(s.post_logvar, t, x_t)
  kl = 0.5 * (-1.0 + model_logvar - true_logvar + torch.exp(true_logvar - model_logvar)
              + (true_mean - model_mean) ** 2 * torch.exp(-model_logvar))
  vb = kl.mean(dim=(1, 2, 3)) / math.log(2.0) * (s.T / 1000.0)
  return (mse + vb).mean()


def conv_gradients(peer: Peer, model) -> Callable:
  """(list of NCHW inputs) → the gradients of `model`'s scalar with respect to its weights and the inputs:
  the convolutions' forward, input-gradient and weight-gradient passes, as a train step runs them."""
  params = list(model.parameters())

  def run(xs):
    with peer.autocast():
      loss = model(xs)
    grads = peer.torch.autograd.grad(loss, params + list(xs))
    peer.sync()
    return grads
  return run


class TrainStep:
  """One optimizer step of `loss_fn(batch)` over `modules`: backward, clip, AdamW, EMA (as our trainer)."""

  def __init__(self, peer: Peer, modules, loss_fn: Callable, optim):
    torch = peer.torch
    self.peer, self.loss_fn = peer, loss_fn
    params = [p for m in modules for p in m.parameters()]
    decay = [p for p in params if p.ndim > 1]
    flat = [p for p in params if p.ndim <= 1]
    self.params = params
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(optim.weight_decay)},
                                  {"params": flat, "weight_decay": 0.0}], lr=float(optim.lr),
                                 betas=(float(optim.b1), float(optim.b2)), eps=float(optim.eps))
    self.clip = float(optim.grad_clip_norm)
    self.ema_decay = float(optim.ema_decay)
    self.ema = [p.detach().clone() for p in params] if self.ema_decay > 0 else []
    for m in modules:
      m.train()

  def __call__(self, batch) -> float:
    torch = self.peer.torch
    self.opt.zero_grad(set_to_none=True)
    with self.peer.autocast():
      loss = self.loss_fn(batch)
    loss.backward()
    if self.clip:
      torch.nn.utils.clip_grad_norm_(self.params, self.clip)
    self.opt.step()
    if self.ema:
      with torch.no_grad():
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.ema_decay)
    self.peer.sync()
    return loss


def prior_loss(peer: Peer, prior, s: Schedule, null: dict, text_drop: float) -> Callable:
  torch = peer.torch

  def loss(batch):
    b = batch["image_embedding"].shape[0]
    drop = torch.rand(b, device=peer.device) < text_drop
    emb = torch.where(drop[:, None], null["text_embedding"][None], batch["text_embedding"])
    states = torch.where(drop[:, None, None], null["text_states"][None], batch["text_states"])
    mask = torch.where(drop[:, None], null["text_mask"][None], batch["text_mask"])
    x0 = (batch["image_embedding"] - prior.clip_mean) / prior.clip_std
    t = torch.randint(0, s.T, (b,), device=peer.device)
    noise = torch.randn_like(x0)
    x_t = _at(s.sqrt_abar, t, x0) * x0 + _at(s.sqrt_1m_abar, t, x0) * noise
    pred = prior(x_t, timestep=t, proj_embedding=emb, encoder_hidden_states=states,
                 attention_mask=mask).predicted_image_embedding
    return ((pred.float() - x0) ** 2).mean()
  return loss


def decoder_loss(peer: Peer, unet, proj, s: Schedule, null: dict, text_drop: float, emb_drop: float) -> Callable:
  torch = peer.torch

  def loss(batch):
    b = batch["image"].shape[0]
    drop = torch.rand(b, device=peer.device) < text_drop
    emb = torch.where(drop[:, None], null["text_embedding"][None], batch["text_embedding"])
    states = torch.where(drop[:, None, None], null["text_states"][None], batch["text_states"])
    mask = torch.where(drop[:, None], null["text_mask"][None], batch["text_mask"])
    dropped = torch.rand(b, device=peer.device) < emb_drop
    img = torch.where(dropped[:, None], proj.learned_classifier_free_guidance_embeddings[None],
                      batch["image_embedding"])
    enc, added = proj(image_embeddings=img, prompt_embeds=emb, text_encoder_hidden_states=states,
                      do_classifier_free_guidance=False)
    mask = torch.nn.functional.pad(mask, (proj.clip_extra_context_tokens, 0), value=True)
    x0 = batch["image"]
    t = torch.randint(0, s.T, (b,), device=peer.device)
    noise = torch.randn_like(x0)
    x_t = _at(s.sqrt_abar, t, x0) * x0 + _at(s.sqrt_1m_abar, t, x0) * noise
    out = unet(x_t, t, encoder_hidden_states=enc, class_labels=added, attention_mask=mask).sample.float()
    return hybrid_loss(torch, s, out, x0, x_t, t, noise)
  return loss


# ------------------------------------------------------------------------------------------ sampling

def unclip_schedulers():
  """diffusers' Karlo schedulers: prior (x0, fixed_small_log), decoder (ε, learned_range), super-resolution."""
  diffusers = import_peer("diffusers")
  S = diffusers.UnCLIPScheduler
  return {"prior": S(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                     clip_sample_range=10.0),
          "decoder": S(variance_type="learned_range", prediction_type="epsilon", num_train_timesteps=1000),
          "sr": S(variance_type="fixed_small_log", prediction_type="epsilon", num_train_timesteps=1000)}


@contextlib.contextmanager
def _inference(peer: Peer):
  with peer.torch.inference_mode(), peer.autocast():
    yield


def prior_sampler(peer: Peer, prior, steps: int, scale: float) -> Callable:
  """(text: dict of [uncond; cond] tensors (2B rows), latents (B, D)) → image embeddings: diffusers' loop."""
  scheduler = unclip_schedulers()["prior"]

  def run(text, latents):
    with _inference(peer):
      scheduler.set_timesteps(steps, device=peer.device)
      ts = scheduler.timesteps
      for i, t in enumerate(ts):
        pred = prior(peer.torch.cat([latents] * 2), timestep=t, proj_embedding=text["text_embedding"],
                     encoder_hidden_states=text["text_states"], attention_mask=text["text_mask"]
                     ).predicted_image_embedding
        uncond, cond = pred.chunk(2)
        pred = uncond + scale * (cond - uncond)
        latents = scheduler.step(pred, timestep=t, sample=latents,
                                 prev_timestep=None if i + 1 == len(ts) else ts[i + 1]).prev_sample
      out = prior.post_process_latents(latents)
    peer.sync()
    return out
  return run


def decoder_sampler(peer: Peer, unet, proj, steps: int, scale: float) -> Callable:
  """(image embeds (B, E), text: [uncond; cond] (2B rows), latents (B, 3, S, S)) → images: diffusers' loop."""
  scheduler = unclip_schedulers()["decoder"]
  torch = peer.torch

  def run(image_embeds, text, latents):
    with _inference(peer):
      enc, added = proj(image_embeddings=image_embeds, prompt_embeds=text["text_embedding"],
                        text_encoder_hidden_states=text["text_states"], do_classifier_free_guidance=True)
      mask = torch.nn.functional.pad(text["text_mask"], (proj.clip_extra_context_tokens, 0), value=True)
      scheduler.set_timesteps(steps, device=peer.device)
      ts = scheduler.timesteps
      c = latents.shape[1]
      for i, t in enumerate(ts):
        out = unet(sample=torch.cat([latents] * 2), timestep=t, encoder_hidden_states=enc, class_labels=added,
                   attention_mask=mask).sample
        uncond, cond = out.chunk(2)
        uncond, _ = uncond.split(c, dim=1)
        cond, var = cond.split(c, dim=1)
        out = torch.cat([uncond + scale * (cond - uncond), var], dim=1)
        latents = scheduler.step(out, t, latents, prev_timestep=None if i + 1 == len(ts) else ts[i + 1]).prev_sample
      out = latents.clamp(-1, 1)
    peer.sync()
    return out
  return run


# ------------------------------------------------------------------------------------------ pipeline

class _Tokens(dict):
  def __getattr__(self, name):
    return self[name]


class OpenClipTokenizer:
  """The `tokenizer` UnCLIPPipeline calls: our BPE tokenizer (open_clip's ids) with the CLIP attention mask."""

  def __init__(self, peer: Peer, context_length: int):
    from unclip_jax.models.clip_encoder import text_mask
    from unclip_jax.models.tokenizer import default_tokenizer

    self.peer, self.model_max_length = peer, context_length
    self._tokenize, self._mask = default_tokenizer(), text_mask

  def __call__(self, prompts, padding="max_length", max_length=None, truncation=True, return_tensors="pt"):
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = np.asarray(self._tokenize(prompts, self.model_max_length), np.int64)
    return _Tokens(input_ids=self.peer.tensor(ids), attention_mask=self.peer.tensor(self._mask(ids)))

  def batch_decode(self, ids):
    return ["" for _ in ids]


def open_clip_text_encoder(peer: Peer, clip):
  """open_clip's text tower as the `text_encoder` UnCLIPPipeline calls (`.text_embeds`, `.last_hidden_state`)."""
  torch = peer.torch

  class TextEncoder(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.clip = clip

    @property
    def device(self):
      return next(self.clip.parameters()).device

    @property
    def dtype(self):
      return next(self.clip.parameters()).dtype

    def forward(self, input_ids, attention_mask=None):
      return text_forward(torch, self.clip, input_ids)

  return TextEncoder()


def text_forward(torch, clip, ids):
  """open_clip's encode_text, also returning the per-token states after ln_final (what unCLIP consumes)."""
  x = clip.token_embedding(ids) + clip.positional_embedding[:ids.shape[1]]
  x = clip.transformer(x, attn_mask=clip.attn_mask[:ids.shape[1], :ids.shape[1]])
  states = clip.ln_final(x)
  embeds = states[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)] @ clip.text_projection
  return types.SimpleNamespace(text_embeds=embeds, last_hidden_state=states)


def clip_forward(peer: Peer, clip) -> Callable:
  """(normalised images NCHW, token ids) → (image embeds, text embeds, text states), as our ClipEmbedder."""
  def run(images, ids):
    with _inference(peer):
      out = text_forward(peer.torch, clip, ids)
      image = clip.encode_image(images)
    peer.sync()
    return image, out.text_embeds, out.last_hidden_state
  return run


def unclip_pipeline(peer: Peer, clip, prior, unet, proj, sr_first, sr_last, context_length: int):
  """diffusers' UnCLIPPipeline over the peer models, open_clip as its text encoder."""
  diffusers = import_peer("diffusers")
  s = unclip_schedulers()
  pipe = diffusers.UnCLIPPipeline(prior=prior, decoder=unet, text_encoder=open_clip_text_encoder(peer, clip),
                                  tokenizer=OpenClipTokenizer(peer, context_length), text_proj=proj,
                                  super_res_first=sr_first, super_res_last=sr_last, prior_scheduler=s["prior"],
                                  decoder_scheduler=s["decoder"], super_res_scheduler=s["sr"])
  pipe.set_progress_bar_config(disable=True)

  def run(prompts, seed: int, steps: tuple[int, int, int], scales: tuple[float, float]):
    g = peer.torch.Generator(device=peer.device).manual_seed(seed)
    with peer.autocast():
      out = pipe(prompt=list(prompts), prior_num_inference_steps=steps[0], decoder_num_inference_steps=steps[1],
                 super_res_num_inference_steps=steps[2], prior_guidance_scale=scales[0],
                 decoder_guidance_scale=scales[1], generator=g, output_type="np").images
    peer.sync()
    return out
  return run


def describe_modules(*modules: Any) -> int:
  return int(sum(p.numel() for m in modules for p in m.parameters()))
