"""Tokenisation: `Example`s -> `EncodedDataset`, a compact ragged store of token and type ids.

Tokens are stored once, unpadded, as one flat array plus offsets, so a dataset of 400k examples
costs a few MB and batches are padded only to their own length bucket (see `batching.py`).
`EncodedDataset.batch` pads a
batch of it (the classification and regression batch keys; see `pad_batch`).
Tokenisation uses a fast Hugging Face tokenizer in batched calls; pairs are encoded as the model
expects ([CLS] a [SEP] b [SEP] for BERT, type id 0 on segment A and 1 on segment B), truncated
longest-first to `max_length` tokens including special tokens.

Example:
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  data = encode(task['train'], tokenizer, max_length=128)
  data.lengths[:3], data.input_ids(0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from adapters_jax.data.buckets import bucket_length
from adapters_jax.data.task_registry import Example


@dataclasses.dataclass(frozen=True)
class EncodedDataset:
  """Tokenised examples, ragged (no padding).

  Attributes:
    token_ids: int32 [total_tokens], every example's ids concatenated.
    type_ids: int32 [total_tokens], segment ids aligned with `token_ids`.
    offsets: int64 [N + 1]; example i spans token_ids[offsets[i]:offsets[i + 1]].
    labels: int32 [N] class ids (-1 = no label) or float32 [N] regression targets.
    pad_id: the tokenizer's padding id, used when batches are padded.
    max_length: the truncation length used; no example is longer.
  """

  token_ids: np.ndarray
  type_ids: np.ndarray
  offsets: np.ndarray
  labels: np.ndarray
  pad_id: int
  max_length: int

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def lengths(self) -> np.ndarray:
    """int32 [N]: number of tokens of each example."""
    return np.diff(self.offsets).astype(np.int32)

  @property
  def is_regression(self) -> bool:
    return self.labels.dtype.kind == 'f'

  def input_ids(self, i: int) -> np.ndarray:
    """int32 [length_i]: token ids of example i."""
    return self.token_ids[self.offsets[i]:self.offsets[i + 1]]

  def token_type_ids(self, i: int) -> np.ndarray:
    """int32 [length_i]: type ids of example i."""
    return self.type_ids[self.offsets[i]:self.offsets[i + 1]]

  def batch(self, indices: np.ndarray, shape_indices: np.ndarray, buckets: Sequence[int],
            example_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`pad_batch` of `indices`, padded to the bucket of the longest of `shape_indices` (the
    whole global batch, so every host pads to the same length)."""
    seq_len = bucket_length(int(self.lengths[np.asarray(shape_indices, np.int64)].max()), buckets)
    return pad_batch(self, indices, seq_len, example_mask)

  def subset(self, indices) -> EncodedDataset:
    """A new dataset holding `indices` (in that order), e.g. for a quick smoke run."""
    indices = np.asarray(indices, np.int64)
    lengths = self.lengths[indices].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    positions = np.concatenate(
        [np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices] or [np.zeros(0, int)])
    return EncodedDataset(self.token_ids[positions], self.type_ids[positions], offsets,
                          self.labels[indices], self.pad_id, self.max_length)


def pad_batch(data: EncodedDataset, indices: np.ndarray, seq_len: int,
              example_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Gathers `indices` from `data` into one batch padded to `seq_len`.

  Args:
    data: the encoded dataset.
    indices: int [B] example indices.
    seq_len: L, at least the longest selected example.
    example_mask: float32 [B]; None means all ones.

  Returns:
    input_ids int32 [B, L] (pad id on padding), attention_mask int32 [B, L] (1 on tokens),
    token_type_ids int32 [B, L] (0 on padding), labels [B] (int32, float32 for regression),
    example_mask float32 [B].
  """
  indices = np.asarray(indices, np.int64)
  lengths = data.lengths[indices]  # [B]
  if len(indices) and lengths.max() > seq_len:
    raise ValueError(f'An example has {lengths.max()} tokens, more than seq_len={seq_len}.')
  positions = np.arange(seq_len)[None, :]  # [1, L]
  valid = positions < lengths[:, None]  # [B, L]
  flat = data.offsets[indices][:, None] + positions  # [B, L]
  flat = np.minimum(flat, max(len(data.token_ids) - 1, 0))
  input_ids = np.where(valid, data.token_ids[flat], data.pad_id).astype(np.int32)
  token_type_ids = np.where(valid, data.type_ids[flat], 0).astype(np.int32)
  if example_mask is None:
    example_mask = np.ones(len(indices), np.float32)
  return {
      'input_ids': input_ids,
      'attention_mask': valid.astype(np.int32),
      'token_type_ids': token_type_ids,
      'labels': data.labels[indices],
      'example_mask': np.asarray(example_mask, np.float32),
  }


def load_tokenizer(name_or_path: str):
  """A fast `transformers.AutoTokenizer` from a hub id or a local folder."""
  import transformers  # Lazy: transformers import is slow and not needed to read data.

  tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
  if not tokenizer.is_fast:
    raise ValueError(f'{name_or_path!r} has no fast tokenizer (tokenizer.json); encode() '
                     'needs one for batched, offset-correct pair encoding.')
  return tokenizer


def encode(examples: Sequence[Example], tokenizer, max_length: int,
           chunk_size: int = 2048) -> EncodedDataset:
  """Tokenises examples (pairs when `text_b` is set) with truncation, without padding.

  Args:
    examples: all single-segment or all pairs.
    tokenizer: a fast Hugging Face tokenizer, or a hub id / folder for `load_tokenizer`.
    max_length: maximum tokens per example, special tokens included.
    chunk_size: examples per tokenizer call (batched calls are much faster than one by one).

  Returns:
    An `EncodedDataset`; labels are float32 if any example label is a float, else int32.
  """
  if isinstance(tokenizer, str):
    tokenizer = load_tokenizer(tokenizer)
  if not examples:
    raise ValueError('encode() got no examples.')
  is_pair = examples[0].text_b is not None
  if any((e.text_b is not None) != is_pair for e in examples):
    raise ValueError('encode() got a mix of single texts and pairs; a task is one or the other.')
  if tokenizer.pad_token_id is None:
    raise ValueError('The tokenizer has no pad token; set tokenizer.pad_token first.')

  ids_chunks, type_chunks, length_chunks = [], [], []
  for start in range(0, len(examples), chunk_size):
    chunk = examples[start:start + chunk_size]
    out = tokenizer(
        [e.text_a for e in chunk],
        [e.text_b for e in chunk] if is_pair else None,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
        return_attention_mask=False,
    )
    for ids, types in zip(out['input_ids'], out['token_type_ids'], strict=True):
      ids_chunks.append(np.asarray(ids, np.int32))
      type_chunks.append(np.asarray(types, np.int32))
      length_chunks.append(len(ids))

  is_float = any(isinstance(e.label, float) for e in examples)
  labels = np.asarray([e.label for e in examples], np.float32 if is_float else np.int32)
  offsets = np.concatenate([[0], np.cumsum(length_chunks, dtype=np.int64)])
  return EncodedDataset(
      token_ids=np.concatenate(ids_chunks),
      type_ids=np.concatenate(type_chunks),
      offsets=offsets,
      labels=labels,
      pad_id=int(tokenizer.pad_token_id),
      max_length=int(max_length),
  )
