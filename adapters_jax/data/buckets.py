"""Length buckets: the few padded lengths a jitted step sees (one compile per bucket)."""

from __future__ import annotations

from collections.abc import Sequence


def length_buckets(max_length: int, min_length: int = 16) -> tuple[int, ...]:
  """Powers of two from `min_length` below `max_length`, then `max_length` itself.

  E.g. length_buckets(128) == (16, 32, 64, 128); length_buckets(100) == (16, 32, 64, 100).
  """
  if max_length < 1:
    raise ValueError(f'max_length must be positive, got {max_length}.')
  buckets = []
  size = min_length
  while size < max_length:
    buckets.append(size)
    size *= 2
  buckets.append(max_length)
  return tuple(buckets)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length."""
  for size in buckets:
    if size >= length:
      return int(size)
  raise ValueError(f'Length {length} exceeds the largest bucket {max(buckets)}; encode with '
                   'max_length <= the largest bucket.')
