"""Our BPE tokenizer: OpenAI's known ids, truncation rules, and id-for-id parity with open_clip."""

from __future__ import annotations

import numpy as np
import pytest

from unclip_jax.models.tokenizer import CONTEXT_LENGTH, VOCAB_SIZE, Tokenizer, default_tokenizer, tokenize

CORPUS = [
    "",
    "a photo of a cat.",
    "A PHOTO OF A CAT.",
    "Hello, World!!! It's   fine; we'll see... don't I'LL you're THEY'VE",
    "café naïve résumé Ångström ß ſ ﬁ ÀÉÎÕÜ",
    "日本語のテキスト, 中文, 한국어, русский текст, العربية",
    "emoji 🐱🐶🚗 👩‍👩‍👧 🏳️‍🌈 ❤️",
    "&amp;lt;b&amp;gt; &quot;quoted&quot; &#39;x&#39; &copy; &nbsp;nbsp",
    "\t\n weird\u200bspace \u00a0 non-breaking   \r\n tabs",
    "numbers 1234567 3.14159 1e-10 #hashtag @user http://example.com/a?b=c",
    "<start_of_text> inside <END_OF_TEXT> specials",
    "mojibake: Ã©tÃ© (ftfy should fix this)",
    "x" * 500,
    " ".join(["word"] * 200),
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def test_known_ids_and_specials():
  tok = default_tokenizer()
  assert tok.vocab_size == VOCAB_SIZE
  assert (tok.sot_id, tok.eot_id) == (49406, 49407)
  ids = tokenize("a photo of a cat.")
  assert ids.shape == (1, CONTEXT_LENGTH) and ids.dtype == np.int32
  assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
  assert not ids[0, 8:].any()
  assert tokenize("").tolist()[0][:3] == [49406, 49407, 0]
  assert tok.decode(tok.encode("Hello,  WORLD")) == "hello , world"


def test_truncation_keeps_end_token_and_pooling_position():
  ids = tokenize(["word " * 200, "a b c"], context_length=16)
  assert ids.shape == (2, 16)
  assert ids[0, 0] == 49406 and ids[0, -1] == 49407 and (ids[0] != 0).all()
  # The end token is the largest id, so argmax finds it (the text tower pools there).
  assert ids.argmax(-1).tolist() == [15, 4]


def test_cache_does_not_change_results():
  tok = Tokenizer()
  first = tok(CORPUS)
  assert np.array_equal(tok(CORPUS), first)


@pytest.mark.peers
def test_ids_match_open_clip():
  from tests.peers import require

  open_clip = require("open_clip")
  ours = tokenize(CORPUS)
  theirs = open_clip.tokenize(CORPUS).numpy()
  mismatched = [CORPUS[i][:40] for i in range(len(CORPUS)) if not np.array_equal(ours[i], theirs[i])]
  assert not mismatched, mismatched
  ref = open_clip.tokenizer.SimpleTokenizer()
  for text in CORPUS[:12]:
    assert default_tokenizer().encode(text) == ref.encode(text)
  for n in (8, 16, 77):
    assert np.array_equal(tokenize(CORPUS, context_length=n), open_clip.tokenize(CORPUS, context_length=n).numpy())
