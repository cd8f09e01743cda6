"""Fixed, hash-based train/validation/test splits for datasets that ship without splits.

A row goes to a split by a stable hash (SHA-256) of a group key: the same key always lands in the
same split, on every machine, Python version and file order, and rows sharing a key (all reviews
of one movie, all copies of one text) never straddle two splits. Python's built-in `hash` is
salted per process, so it is never used here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# Percent of groups per split, in order; must sum to 100.
DEFAULT_FRACTIONS: tuple[tuple[str, int], ...] = (('train', 80), ('validation', 10), ('test', 10))


def stable_bucket(key: str, salt: str = '', buckets: int = 100) -> int:
  """A bucket in [0, buckets) from the SHA-256 of `salt + key` (stable across runs)."""
  digest = hashlib.sha256((salt + key).encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') % buckets


def assign_split(key: str, salt: str = '',
                 fractions: Sequence[tuple[str, int]] = DEFAULT_FRACTIONS) -> str:
  """The split name for a group key, given integer percentages per split.

  Args:
    key: the group key (e.g. a movie name, or a normalised text).
    salt: a per-dataset prefix so that two datasets do not share split assignments.
    fractions: (split name, percent) pairs summing to 100.

  Returns:
    The split name whose percentage range holds the key's bucket.
  """
  total = sum(p for _, p in fractions)
  if total != 100:
    raise ValueError(f'Split percentages must sum to 100, got {total}: {list(fractions)}.')
  bucket = stable_bucket(key, salt)
  upper = 0
  for name, percent in fractions:
    upper += percent
    if bucket < upper:
      return name
  raise AssertionError('unreachable: percentages sum to 100')


def normalize_text(text: str) -> str:
  """Key used to detect duplicate texts: whitespace collapsed, case folded."""
  return ' '.join(text.split()).casefold()
