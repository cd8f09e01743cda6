"""Embedding tables looked up row by row from their quantised store.

A quantised table's blocks run along its last axis (`codec`): each row [features] is its own
ceil(features / block_size) blocks (padded alone when the block size does not divide the
features), so a row's codes and scales are rows of `codes` [vocab, m / 2] (or [vocab, m], int8)
and `scales` [vocab, m / block_size]. `take_rows` gathers the looked-up rows' codes and scales and
dequantises only them: a step's temporaries hold `[batch, seq, features]`, not the dequantised
`[vocab, features]` table. The values equal `dequantize(table)[ids]` bit for bit (the same
elementwise arithmetic on the same codes and scales).

Our backbones' embedding modules read their tables through `stored_table` (Flax's `param` would
compare the codes' shape with the table's and refuse), so `dequantize_tree(params,
keep_tables=True)` can leave every quantised `embedding` leaf as it is stored. A tied output head
(`whole_table`, e.g. `DecoderLM`'s `attend`) multiplies by every row: it dequantises the whole
table, as an untied head's quantised `kernel` is.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.quantization.codec import QuantizedArray, dequantize

TABLE_NAME = 'embedding'


def take_rows(table: jax.Array | QuantizedArray, ids: jax.Array) -> jax.Array:
  """`table[ids]`: `[*ids.shape, features]`; a quantised table's rows are dequantised alone (in
  its scales' dtype)."""
  if not isinstance(table, QuantizedArray):
    return jnp.take(table, ids, axis=0)
  rows = QuantizedArray(codes=jnp.take(table.codes, ids, axis=0),  # [*ids, m / 2] or [*ids, m]
                        scales=jnp.take(table.scales, ids, axis=0),  # [*ids, m / block_size]
                        kind=table.kind, block_size=table.block_size,
                        shape=(*ids.shape, *table.shape[1:]), dtype=table.dtype)
  return dequantize(rows)


def whole_table(table: jax.Array | QuantizedArray) -> jax.Array:
  """The float table `[vocab, features]` (dequantised whole when quantised)."""
  return dequantize(table) if isinstance(table, QuantizedArray) else table


def stored_table(module: nn.Module, init: Any, shape: tuple[int, ...], dtype: Any,
                 name: str = TABLE_NAME) -> jax.Array | QuantizedArray:
  """`module.param(name, init, shape, dtype)`, or the `QuantizedArray` the params hold there."""
  if module.has_variable('params', name):
    stored = module.get_variable('params', name)
    if isinstance(stored, QuantizedArray):
      return stored
  return module.param(name, init, shape, dtype)


class QuantizableEmbed(nn.Embed):
  """`flax.linen.Embed` whose `embedding` may be stored quantised: lookups then dequantise only the
  rows they take (`take_rows`), `attend` the whole table. The same params and outputs as
  `nn.Embed` otherwise."""

  def setup(self):
    self.embedding = stored_table(self, self.embedding_init, (self.num_embeddings, self.features),
                                  self.param_dtype)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """`inputs` [...] integer -> `[..., features]` in `dtype`."""
    if not isinstance(self.embedding, QuantizedArray):
      return super().__call__(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError('Input type must be an integer or unsigned integer.')
    (rows,) = self.promote_dtype(take_rows(self.embedding, inputs), dtype=self.dtype, inexact=False)
    return rows

  def attend(self, query: jax.Array) -> jax.Array:
    """`query @ table.T` -> `[..., num_embeddings]` (the whole table dequantised)."""
    query, table = self.promote_dtype(query, whole_table(self.embedding), dtype=self.dtype)
    return jnp.dot(query, table.T)

  def table(self) -> jax.Array:
    """The float table `[num_embeddings, features]` (dequantised whole when quantised)."""
    return whole_table(self.embedding)
