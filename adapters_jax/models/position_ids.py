"""The position-ids site: where a method may move the positions a host gives its real tokens.

Our BERT/RoBERTa (`embeddings/position_ids`) and decoders (`position_ids`) pass the position ids
of their tokens `[batch, seq]` int32 through `PositionIds`, an identity in the base model, before
they reach the learned position embeddings or RoPE. Prefix tuning with
`positions='after_prefix'` (`adapters_jax.methods.prefix_tuning`) adds P there, so real tokens sit
P positions later, as when a prefix is fed as `past_key_values` (PEFT's PREFIX_TUNING on
transformers' models). T5 has no such site: its positions are relative buckets computed in each
attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class PositionIds(nn.Module):
  """Identity on position ids `[batch, seq]` int32; a spliced method may shift them."""

  @nn.compact
  def __call__(self, positions: jax.Array) -> jax.Array:
    return positions
