"""The input-embeddings site: where a method may insert learned vectors into a host's sequence.

Prompt tuning (Lester et al. 2021) puts P learned vectors among the token embeddings. Our backbones
call `InputEmbeddings` (an identity in the base model, named `input_embeddings`) on the token
embeddings `[batch, seq, hidden]` and let its output be longer than the input: the caller then
grows everything that is per position (attention mask, positions, token types) with
`grow_front`, so the base model and a prompted one run one code path. The inserted positions are
treated as real tokens at the front of the sequence (PEFT's convention: the
attention mask gets ones in front, position ids count them, token types get 0), so real tokens
sit P positions later; for `prefix_after_bos` this is exact when position 0 holds a real token
(right padding, or no padding).

Paths: BERT `embeddings/input_embeddings`, decoders `embeddings/input_embeddings`, T5
`encoder/input_embeddings` (the decoder's inputs get no prompt).

Our BERT/RoBERTa also call it on the embeddings module's output, `embeddings/embeddings_output`
(after positions, token types, LayerNorm and dropout; AdapterHub's prompt placement): there only
the attention mask grows, and the real tokens keep their positions.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class InputEmbeddings(nn.Module):
  """Identity on the token embeddings `[batch, seq, hidden]`; a spliced method may return
  `[batch, seq + P, hidden]`."""

  @nn.compact
  def __call__(self, embedded: jax.Array) -> jax.Array:
    return embedded


def grow_front(values: jax.Array, length: int, fill) -> jax.Array:
  """`values` `[batch, seq, ...]` with `length - seq` columns of `fill` prepended on axis 1
  (unchanged when `length == seq`): a per-position input grown with the inserted vectors."""
  values = jnp.asarray(values)
  extra = length - values.shape[1]
  if extra == 0:
    return values
  front = jnp.full((values.shape[0], extra) + values.shape[2:], fill, values.dtype)
  return jnp.concatenate([front, values], axis=1)
