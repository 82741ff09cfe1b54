"""CLIP's byte-level BPE tokenizer, id-for-id equal to OpenAI's / open_clip's `SimpleTokenizer`.

Written from the published algorithm so that no torch import or network access is needed: the merge
list ships as package data (`assets/bpe_simple_vocab_16e6.txt.gz`, MIT, see `assets/LICENSE-bpe-vocab.txt`).
Semantics that matter for parity with released CLIP weights:
  * text is cleaned with ftfy, HTML-unescaped twice, whitespace-collapsed and lower-cased;
  * pre-tokenisation splits letters runs, single digits, punctuation runs and English contractions;
  * every UTF-8 byte maps to a printable unicode character, words end with `</w>`;
  * the vocabulary is 256 bytes + 256 `</w>` bytes + 48,894 merges + `<start_of_text>`, `<end_of_text>`;
  * sequences are `[sot] + ids + [eot]`, zero-padded to the context length; a longer one is cut to the
    context length and its last id replaced by `eot`, so the pooled end token always exists.
"""

from __future__ import annotations

import functools
import gzip
import html
from importlib import resources
from typing import Iterable, Sequence

import numpy as np

CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
SOT, EOT = "<start_of_text>", "<end_of_text>"
_NUM_MERGES = VOCAB_SIZE - 256 * 2 - 2  # 48,894 merges are used of the ~262k in the file


@functools.lru_cache(maxsize=None)
def byte_alphabet() -> dict[int, str]:
  """Maps each byte to a printable character: printable Latin-1 bytes keep their own code point,
  the other 68 bytes (controls, space, ...) take code points 256, 257, ... in byte order."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  table = {b: chr(b) for b in keep}
  extra = 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _vocab_path():
  return resources.files("unclip_jax.models").joinpath("assets/bpe_simple_vocab_16e6.txt.gz")


def clean_text(text: str) -> str:
  """The text the BPE sees: ftfy-fixed, HTML-unescaped twice, whitespace-collapsed, lower-cased."""
  import ftfy  # imported lazily: it is slow to import and only needed when tokenising

  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


class Tokenizer:
  """`tokenizer(["a photo of a cat."])` → int32 array (batch, context_length)."""

  def __init__(self, context_length: int = CONTEXT_LENGTH, vocab_path=None):
    import regex  # the `\p{L}` / `\p{N}` classes need the `regex` module, not `re`

    self.context_length = context_length
    path = _vocab_path() if vocab_path is None else vocab_path
    with (path.open("rb") if hasattr(path, "open") and not isinstance(path, str) else open(path, "rb")) as f:
      lines = gzip.decompress(f.read()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]  # line 0 is a version header
    symbols = list(byte_alphabet().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    self.encoder = {tok: i for i, tok in enumerate(vocab)}
    self.decoder = dict(enumerate(vocab))
    self.ranks = {m: i for i, m in enumerate(merges)}
    self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
    self.vocab_size = len(vocab)
    self._bytes = byte_alphabet()
    self._unbytes = {c: b for b, c in self._bytes.items()}
    self._pattern = regex.compile(
        rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE)
    self._cache: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}

  def _merge(self, word: str) -> tuple[str, ...]:
    """Applies merges lowest rank first; each round merges every left-to-right occurrence of that pair."""
    cached = self._cache.get(word)
    if cached is not None:
      return cached
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    inf = len(self.ranks)
    while len(parts) > 1:
      best = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, inf))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and parts[i] == best[0] and parts[i + 1] == best[1]:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    result = tuple(parts)
    if len(self._cache) < 100_000:
      self._cache[word] = result
    return result

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without start/end tokens or padding."""
    ids = []
    for piece in self._pattern.findall(clean_text(text)):
      mapped = piece if piece in (SOT, EOT) else "".join(self._bytes[b] for b in piece.encode("utf-8"))
      ids.extend(self.encoder[t] for t in self._merge(mapped))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` (special tokens and padding dropped); word ends become spaces."""
    skip = {0, self.sot_id, self.eot_id}
    text = "".join(self.decoder[int(i)] for i in ids if int(i) not in skip)
    # `</w>` is itself made of mapped printable bytes, so it survives the byte round trip as text.
    data = bytearray(self._unbytes[c] for c in text)
    return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

  def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    n = context_length or self.context_length
    out = np.zeros((len(texts), n), dtype=np.int32)
    for row, text in enumerate(texts):
      ids = [self.sot_id, *self.encode(text), self.eot_id]
      if len(ids) > n:
        ids = ids[:n]
        ids[-1] = self.eot_id
      out[row, :len(ids)] = ids
    return out


@functools.lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
  return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """Tokenises with the shared default tokenizer (the vocabulary is read once per process)."""
  return default_tokenizer()(texts, context_length)
