"""Word-order hard negatives: a caption turned into one that uses the same words but says something else.

A contrastive CLIP trained on random batches rarely needs word order: a batch seldom holds both "a red
circle above a blue square" and "a red circle below a blue square", so it learns a bag of words, and the
relation, which colour goes with which object, and the count are lost from its embeddings (Yuksekgonul
et al. 2023, "When and why vision-language models behave like bags-of-words"). DALL·E 2 inherits that
through the prior and the decoder (attribute binding is its known weakness). NegCLIP's remedy is to add
such perturbed captions to the batch as extra negatives; these functions make them from plain English
word lists, so they apply to any captions, and a caption they cannot perturb simply has none. A negative
must also be a caption that can be true of some training image (see `sample_negative`'s `exclude`).

Kinds:
  relation  a spatial relation swapped for its opposite ("left of" ↔ "right of", "above" ↔ "below", ...)
  color     two different colour words of different things swapped ("a red circle and a blue square" →
            "a blue circle and a red square")
  count     a number word replaced by another ("three blue squares" → "two blue squares")

A flipped relation also has a picture: the caption's own image mirrored across the relation's axis
(`flip_axis`), which CLIP training can use as a wrong image for the caption (`train.image_hard_negatives`).
"""

from __future__ import annotations

import re

import numpy as np

KINDS = ("relation", "color", "count")

RELATION_OPPOSITES = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
                      "over": "under", "under": "over", "in front of": "behind", "behind": "in front of",
                      "on top of": "beneath", "beneath": "on top of", "inside": "outside", "outside": "inside"}
COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray",
               "grey", "cyan", "magenta")
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

_RELATION = re.compile(r"\b(" + "|".join(sorted(map(re.escape, RELATION_OPPOSITES), key=len, reverse=True)) + r")\b")
_COLOR = re.compile(r"\b(" + "|".join(COLOR_WORDS) + r")\b")
_NUMBER = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b")


def parse_kinds(value: str, known: tuple[str, ...] = KINDS, what: str = "hard-negative") -> tuple[str, ...]:
  """'relation,color' → ('relation', 'color'); '' → (); a ValueError names an unknown kind (of `known`)."""
  kinds = tuple(k.strip() for k in str(value).split(",") if k.strip())
  unknown = [k for k in kinds if k not in known]
  if unknown:
    raise ValueError(f"unknown {what} kind {unknown[0]!r}; choose from {', '.join(known)} (comma-separated)")
  return kinds


def _replace_at(text: str, match: re.Match, new: str) -> str:
  return text[:match.start()] + new + text[match.end():]


def relation_flips(caption: str) -> list[str]:
  """The caption with one of its relations replaced by the opposite, for each relation it has."""
  return [_replace_at(caption, m, RELATION_OPPOSITES[m.group(1)]) for m in _RELATION.finditer(caption)]


def color_swaps(caption: str) -> list[str]:
  """The caption with two different colour words exchanged, for each such pair whose next words differ
  ("a blue square and a green square" swapped says the same thing, so it is no negative)."""
  found = list(_COLOR.finditer(caption))
  out = []
  for i, a in enumerate(found):
    for b in found[i + 1:]:
      if a.group(1) != b.group(1) and _next_word(caption, a) != _next_word(caption, b):
        out.append(caption[:a.start()] + b.group(1) + caption[a.end():b.start()] + a.group(1) + caption[b.end():])
  return out


def _next_word(text: str, match: re.Match) -> str:
  rest = text[match.end():].split()
  return rest[0].strip(",.;") if rest else ""


def count_changes(caption: str) -> list[str]:
  """The caption with its first number word replaced by each number word within two of it (plural nouns stay
  right, and the change is one a picture can show)."""
  m = _NUMBER.search(caption)
  if m is None:
    return []
  i = NUMBER_WORDS.index(m.group(1))
  return [_replace_at(caption, m, NUMBER_WORDS[j]) for j in range(max(0, i - 2), min(len(NUMBER_WORDS), i + 3))
          if j != i]


_MAKERS = {"relation": relation_flips, "color": color_swaps, "count": count_changes}

HORIZONTAL_RELATIONS = ("left of", "right of")
VERTICAL_RELATIONS = ("above", "below", "over", "under", "on top of", "beneath")
NO_FLIP, FLIP_LEFT_RIGHT, FLIP_UP_DOWN = 0, 1, 2


def flip_axis(caption: str, negative: str | None) -> int:
  """Which mirror image of the caption's picture shows `negative`: FLIP_LEFT_RIGHT, FLIP_UP_DOWN or NO_FLIP.

  Only a caption with exactly one relation, whose negative is that relation flipped: mirroring the picture
  across the relation's axis swaps the two objects' sides there and keeps their colours and shapes (mirrored
  up-down a triangle points down, still a triangle). "in front of", "inside" and the like have no mirror.
  Why: a text-only negative teaches the text tower that the flipped wording differs, but the image tower never
  has to say where anything is (the demo CLIP's image embedding carried no placement at all, even after
  6000 steps with relation negatives); the mirrored image is the same objects with the sides swapped, so only
  placement tells the two pictures apart."""
  found = list(_RELATION.finditer(caption))
  if negative is None or len(found) != 1 or negative not in relation_flips(caption):
    return NO_FLIP
  relation = found[0].group(1)
  return FLIP_LEFT_RIGHT if relation in HORIZONTAL_RELATIONS else FLIP_UP_DOWN if relation in VERTICAL_RELATIONS \
      else NO_FLIP


def perturbations(caption: str, kinds=KINDS) -> list[str]:
  """Every hard negative of `caption` of the given kinds, without repeats or the caption itself."""
  out = []
  for kind in kinds:
    out.extend(_MAKERS[kind](caption))
  return [c for c in dict.fromkeys(out) if c != caption]


def sample_negative(caption: str, kinds, rng: np.random.Generator, exclude=None) -> str | None:
  """One hard negative of `caption` drawn uniformly from its `perturbations`, or None where it has none.

  `exclude(text) -> bool` drops negatives that name something training never shows as a positive. Why: a
  caption seen only as a negative is false for every training image, so the text tower learns to push that
  wording away from all images, from text alone, and then calls the unseen combination false at test time
  (in the shapes world such a demo CLIP preferred the flipped caption of a held-out relation 99% of the time).
  """
  options = [c for c in perturbations(caption, kinds) if exclude is None or not exclude(c)]
  return options[int(rng.integers(len(options)))] if options else None
