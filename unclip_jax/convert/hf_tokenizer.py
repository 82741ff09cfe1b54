"""A Hugging Face CLIP tokenizer folder checked against ours: the same ids, or a UserError naming the file.

A converted pipeline tokenizes with `unclip_jax.models.tokenizer` (OpenAI's BPE, shipped in the package),
so the folder's tokenizer is not copied but compared: its vocabulary (vocab.json, or tokenizer.json's
`model.vocab`) must give every token our id, its merges (merges.txt, or `model.merges`) must be ours in
the same order, its start/end tokens must be CLIP's, and its model_max_length must be the text encoder's
context. Our tokenizer names the special tokens `<start_of_text>` / `<end_of_text>`; Hugging Face's
vocabulary spells them `<|startoftext|>` / `<|endoftext|>`, with the same ids. The padding token does not
matter: padded positions are masked in the prior and decoder (and sit after the pooled end token).
"""

from __future__ import annotations

import json
from pathlib import Path

from unclip_jax.errors import UserError
from unclip_jax.models.tokenizer import EOT, SOT, Tokenizer

HF_SPECIAL = {SOT: "<|startoftext|>", EOT: "<|endoftext|>"}


def _json(path: Path):
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({getattr(e, 'msg', e)})") from None


def _read(folder: Path) -> tuple[dict, list[tuple[str, str]], Path, Path]:
  """(vocab, merges, vocab file, merges file) from vocab.json + merges.txt, else tokenizer.json."""
  vocab_file, merges_file, fast = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
  if vocab_file.is_file() and merges_file.is_file():
    lines = merges_file.read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    return _json(vocab_file), merges, vocab_file, merges_file
  if fast.is_file():
    model = _json(fast).get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
      raise UserError(f"{fast} does not hold a BPE model with a vocabulary (CLIP's tokenizer is BPE)")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    return model["vocab"], merges, fast, fast
  what = "is missing" if not folder.is_dir() else "has neither vocab.json + merges.txt nor tokenizer.json"
  raise UserError(f"tokenizer folder {folder} {what}")


def _special(value) -> str | None:
  return value.get("content") if isinstance(value, dict) else value


def check_tokenizer(folder: str | Path, context_length: int, tokenizer: Tokenizer | None = None) -> str:
  """Checks the tokenizer in `folder` gives our ids (UserError naming the file otherwise); returns a summary."""
  folder = Path(folder)
  ours = tokenizer or Tokenizer(context_length=context_length)
  vocab, merges, vocab_file, merges_file = _read(folder)
  expected = {HF_SPECIAL.get(tok, tok): i for tok, i in ours.encoder.items()}
  for tok, i in expected.items():
    if vocab.get(tok) != i:
      have = "lacks it" if tok not in vocab else f"gives id {vocab[tok]}"
      raise UserError(f"{vocab_file}: token {tok!r} has id {i} in unclip_jax's CLIP vocabulary, this tokenizer "
                      f"{have}; only OpenAI CLIP's BPE vocabulary can be converted")
  if len(vocab) != len(expected):
    extra = sorted(set(vocab) - set(expected), key=vocab.get)[0]
    raise UserError(f"{vocab_file}: {len(vocab)} tokens, CLIP's vocabulary has {len(expected)} (e.g. {extra!r} "
                    f"with id {vocab[extra]} is not ours)")
  our_merges = sorted(ours.ranks, key=ours.ranks.get)
  for rank, (have, want) in enumerate(zip(merges, our_merges)):
    if have != want:
      raise UserError(f"{merges_file}: merge {rank} is {' '.join(have)!r}, CLIP's is {' '.join(want)!r}")
  if len(merges) != len(our_merges):
    raise UserError(f"{merges_file}: {len(merges)} merges, CLIP's BPE has {len(our_merges)}")
  config_file = folder / "tokenizer_config.json"
  config = _json(config_file) if config_file.is_file() else {}
  special_file = folder / "special_tokens_map.json"
  config = {**(_json(special_file) if special_file.is_file() else {}), **config}
  for field, token in (("bos_token", HF_SPECIAL[SOT]), ("eos_token", HF_SPECIAL[EOT])):
    if field in config and _special(config[field]) != token:
      raise UserError(f"{config_file}: {field} is {_special(config[field])!r}, CLIP's is {token!r}")
  max_length = config.get("model_max_length")
  if isinstance(max_length, int) and max_length < 10**6 and max_length != context_length:
    raise UserError(f"{config_file}: model_max_length {max_length} differs from the text encoder's "
                    f"{context_length} positions")
  return f"tokenizer: {vocab_file.name} matches unclip_jax's CLIP BPE ({len(vocab)} ids, {len(merges)} merges)"
