"""The key/value cache of a decoder: what earlier tokens left for later ones to attend to.

A functional pytree (passed in and returned, never a Flax variable collection), so it goes
through `Spliced.apply` like any other argument and through `jax.jit` and `lax.while_loop`.
Slots are filled left to right: a call with `s` new tokens writes slots `[index, index + s)`.
A slot's position (for RoPE or learned embeddings) is separate from its index, so left-padded
prompts keep correct positions; `valid` marks the slots that hold real tokens.

Example:
  cache = KVCache.empty(config, batch=2, max_len=32)
  logits, cache = model.apply({'params': params}, ids, mask, positions, cache, method='decode')
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adapters_jax.models.decoder_config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of every layer, with a layer axis first (what `nn.scan` slices).

  Attributes:
    keys: `[layers, batch, max_len, kv_heads, head_dim]` in the compute dtype (after RoPE).
    values: same shape as `keys`.
    valid: `[batch, max_len]` bool, True where a slot holds a real (not padding) token.
    index: int32 scalar, the next slot to write.
    started: static; False until a first call has written slots (that call may insert a
      prompt's vectors in front of its tokens: `models.input_embeddings`).
  """

  keys: jax.Array
  values: jax.Array
  valid: jax.Array
  index: jax.Array
  started: bool = False

  @property
  def max_len(self) -> int:
    return self.keys.shape[2]

  @classmethod
  def empty(cls, config: DecoderConfig, batch: int, max_len: int) -> KVCache:
    """A cache of `max_len` slots, all empty."""
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return cls(keys=jnp.zeros(shape, config.compute_dtype),
               values=jnp.zeros(shape, config.compute_dtype),
               valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

  def layer(self, i: int) -> tuple[jax.Array, jax.Array]:
    """Keys and values of layer `i`: `[batch, max_len, kv_heads, head_dim]` each."""
    return self.keys[i], self.values[i]

  def with_valid(self, attention_mask: jax.Array) -> KVCache:
    """Marks the slots of `attention_mask` `[batch, s]` (written at `index`) valid or not."""
    valid = jax.lax.dynamic_update_slice(self.valid, attention_mask.astype(bool),
                                         (0, self.index))
    return dataclasses.replace(self, valid=valid)

  def with_extra_slots(self, extra: int) -> KVCache:
    """`extra` more empty slots at the end (a prompt's vectors take the first slots)."""
    if extra == 0:
      return self
    grow = lambda a, axis: jnp.concatenate(
        [a, jnp.zeros(a.shape[:axis] + (extra,) + a.shape[axis + 1:], a.dtype)], axis=axis)
    return dataclasses.replace(self, keys=grow(self.keys, 2), values=grow(self.values, 2),
                               valid=grow(self.valid, 1))

  def advanced(self, keys: jax.Array, values: jax.Array, steps: int) -> KVCache:
    """The cache with every layer's new `keys`/`values` and `index` moved on by `steps`."""
    return dataclasses.replace(self, keys=keys, values=values, index=self.index + steps,
                               started=True)


jax.tree_util.register_dataclass(
    KVCache, data_fields=['keys', 'values', 'valid', 'index'], meta_fields=['started'])


def write_slots(cached: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """`cached` `[batch, max_len, ...]` with `new` `[batch, s, ...]` written at slot `index`."""
  start = (0, index) + (0,) * (cached.ndim - 2)
  return jax.lax.dynamic_update_slice(cached, new.astype(cached.dtype), start)


def slot_mask(query_slots: jax.Array, key_valid: jax.Array,
                   sliding_window: int | None) -> jax.Array:
  """Boolean `[batch, 1, q_len, k_len]`: key slot j is seen from query slot i when it holds a
  real token, j <= i (causal) and, with a window, j > i - sliding_window (HF's semantics).

  Args:
    query_slots: `[q_len]` int32, the slot index of each query.
    key_valid: `[batch, k_len]` bool.
    sliding_window: None or the window length.
  """
  key_slots = jnp.arange(key_valid.shape[1], dtype=jnp.int32)  # [k_len]
  allowed = key_slots[None, :] <= query_slots[:, None]  # [q_len, k_len]
  if sliding_window is not None:
    allowed &= key_slots[None, :] > query_slots[:, None] - sliding_window
  return allowed[None, None] & key_valid[:, None, None, :]
