"""The position-ids site: where a method may move the positions a host gives its real tokens.

Our BERT/RoBERTa (`embeddings/position_ids`) and decoders (`position_ids`) pass the position ids
of their tokens `[batch, seq]` int32 through `PositionIds`, an identity in the base model, before
they reach the learned position embeddings or RoPE. T5's stacks (`encoder/key_positions`,
`decoder/key_positions`) pass the key positions `[k_len]` int32 their relative position bias is
computed from through one: a method that puts F keys in front at the attentions' `KeyValueHook`
returns F more positions, and the stack moves its queries F places on. Prefix tuning with
`positions='after_prefix'` (`adapters_jax.methods.prefix_tuning`) adds P there, so real tokens
sit P positions later (on T5 with its keys at 0..P-1), as when a prefix is fed as
`past_key_values` (PEFT's PREFIX_TUNING on transformers' models).
"""

from __future__ import annotations

import flax.linen as nn
import jax


class PositionIds(nn.Module):
  """Identity on position ids (`[batch, seq]`, or T5's key positions `[k_len]`, int32); a spliced
  method may shift them."""

  @nn.compact
  def __call__(self, positions: jax.Array) -> jax.Array:
    return positions
