"""The place in an attention layer where its keys, values and mask are final: a named identity.

A backbone calls `KeyValueHook(name='prefix')(key, value, mask, query_input)` just before the
attention scores are computed. By itself it returns `(key, value, mask)` unchanged; it exists so that
a splice can name the place (`.../attention/prefix`, placement `keys_values`,
`adapters_jax.splicing.sites.KEY_VALUE_PREFIX`) and extend what the queries attend over: prefix
tuning (`adapters_jax.methods.prefix_tuning`) prepends learned keys and values and opens the mask
for them. `query_input` is the attention's input on the query side (the hidden states the queries
are computed from, before their projection): what UniPELT's prefix gate reads, as AdapterHub passes
its attentions' `hidden_states` to its prefix layer. The queries, the output length and
the positions of the real tokens (RoPE, learned or relative positions) are untouched here (a prefix
that moves them does so at the model's `position_ids` site, `adapters_jax.models.position_ids`); a backbone
with an additive score bias (T5) pads it with zeros for the added keys (`pad_keys_in_front`), unless
its stack's `key_positions` site already gave them positions (the bias then covers them).

A host whose attention has no such hook is refused by prefix tuning, naming the missing piece.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class KeyValueHook(nn.Module):
  """Identity on `(key, value, mask)`; `query_input` is there to be read by an interceptor.

  Args (of `__call__`):
    key: `[batch, k_len, kv_heads, head_dim]`.
    value: same shape as `key`.
    mask: bool broadcastable to `[batch, heads, q_len, k_len]` (True = attend), or None.
    query_input: `[batch, q_len, hidden]`, the attention's input on the query side (self-attention:
      the hidden states keys and values come from too; cross-attention: the decoder's).

  Returns:
    `(key, value, mask)`; an interceptor may return them with extra keys in front (k_len grows).
  """

  @nn.compact
  def __call__(self, key, value, mask, query_input):
    del query_input  # read by interceptors (prefix gates), not here
    return key, value, mask


def pad_keys_in_front(bias: jax.Array | None, k_len: int) -> jax.Array | None:
  """`bias` `[..., q_len, k_len0]` with zeros in front up to `k_len` keys (added keys without a
  position get no positional bias; a bias that already has `k_len` keys is returned as it is);
  None stays None."""
  if bias is None or bias.shape[-1] == k_len:
    return bias
  pad = [(0, 0)] * (bias.ndim - 1) + [(k_len - bias.shape[-1], 0)]
  return jnp.pad(bias, pad)
