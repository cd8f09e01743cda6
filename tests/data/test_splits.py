"""Hash-based splits: a key's bucket is SHA-256 of salt + key, split by cumulative percentages."""

import hashlib

import pytest

from adapters_jax.data.splits import assign_split, normalize_text, stable_bucket


def _bucket(text: str) -> int:  # the documented formula, written out
  return int(hashlib.sha256(text.encode('utf-8')).hexdigest()[:16], 16) % 100


def test_buckets_are_sha256_of_salt_then_key():
  for key, salt in (('The Room', ''), ('The Room', 'rotten_tomatoes/'), ('ünïcode', 'x/')):
    assert stable_bucket(key, salt) == _bucket(salt + key)
  assert stable_bucket('abc', '', buckets=7) == int(
      hashlib.sha256(b'abc').hexdigest()[:16], 16) % 7


def test_splits_follow_cumulative_percentages_and_the_salt():
  keys = [f'movie {i}' for i in range(400)]
  fractions = (('train', 50), ('validation', 30), ('test', 20))
  for key in keys:
    bucket = _bucket('s/' + key)
    want = 'train' if bucket < 50 else 'validation' if bucket < 80 else 'test'
    assert assign_split(key, 's/', fractions) == want
  # The salt takes part: some keys land elsewhere under another salt.
  assert any(assign_split(k, 'a/') != assign_split(k, 'b/') for k in keys)
  with pytest.raises(ValueError, match='sum to 100, got 90'):
    assign_split('k', '', (('train', 80), ('test', 10)))


def test_normalize_text_collapses_whitespace_and_case():
  assert normalize_text('  A  Film\tabout\nSTRASSE ') == 'a film about strasse'
