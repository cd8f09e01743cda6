"""Multi-head attention with dropout on the probabilities, with a hand-written backward pass.

Training-mode attention of the encoder (HF semantics: softmax, then dropout on the probabilities,
then the weighted sum of values). `jax.nn.dot_product_attention` has no dropout, so the encoder
computes this one itself. Differentiating it automatically costs more than needed on CPU: the
softmax backward reduces over the `[batch, heads, q_len, k_len]` cotangent, and the mask and
dropout selects are differentiated as separate passes. The backward here is the standard one
(as in FlashAttention): with `O` the output and `dO` its cotangent,

    dPd = dO V^T                                        # cotangent of the dropped probabilities
    dS  = P * (keep * dPd / (1 - rate) - rowsum(dO * O))  # rowsum over head dim, not k_len
    dQ  = scale * dS K,   dK = scale * dS^T Q,   dV = Pd^T dO

`rowsum(dO * O)` equals the softmax backward's `rowsum(dP * P)` and reads a tensor `k_len / dim`
times smaller; the selects fold into the one elementwise pass that forms `dS`. Gradients equal
those of the autodiff form to float32 rounding (tests/models/test_dropout_attention.py checks
both against a float64 reference).

The heads are computed in `groups` independent slices (see `attention_choice.head_groups`): on CPU, XLA runs
independent slices on different cores, which it does poorly for one batched matmul over all heads.
The function is `jax.custom_vjp`, so it supports reverse-mode differentiation (`grad`, `vjp`) but
not forward mode (`jvp`); the deterministic path does not use it.

`einsum_dropout_attention` is the same function in its plain form (one batched einsum over all
heads, differentiated by XLA): the encoder's training-mode attention on accelerators, where the
hand-written backward and the head groups buy nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from adapters_jax.nn.dropout import apply_keep_mask


def dropout_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array,
                      keep: jax.Array, rate: float, groups: int = 1) -> jax.Array:
  """Softmax attention with inverted dropout on the probabilities.

  Args:
    query: `[batch, q_len, heads, dim]`.
    key, value: `[batch, k_len, heads, dim]`.
    mask: boolean, broadcastable to `[batch, heads, q_len, k_len]`; True = attend.
    keep: boolean `[batch, heads, q_len, k_len]` dropout keep-mask (True = keep); kept
      probabilities are scaled by `1 / (1 - rate)`.
    rate: the dropout rate `keep` was drawn with, in [0, 1).
    groups: number of head slices computed independently; must divide `heads`.

  Returns:
    The context `[batch, q_len, heads, dim]` in `value.dtype`. Logits and softmax are float32.

  Example:
    keep = dropout_keep_mask(rng, (b, n, t, t), 0.1)
    context = dropout_attention(q, k, v, padding_mask[:, None, None, :], keep, 0.1, groups=4)
  """
  heads = query.shape[2]
  if heads % groups:
    raise ValueError(f'groups={groups} must divide the number of heads ({heads}).')
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout rate must be in [0, 1), got {rate}.')
  return _attention(query, key, value, mask, keep, float(rate), int(groups))


def einsum_dropout_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                             mask: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """`dropout_attention`'s function, written plainly and differentiated automatically.

  Same arguments (no `groups`) and result: `[batch, q_len, heads, dim]` in `value.dtype`, logits
  and softmax in float32, the probabilities cast to `value.dtype` after dropout (as
  `jax.nn.dot_product_attention` casts them).
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout rate must be in [0, 1), got {rate}.')
  scale = 1.0 / jnp.sqrt(jnp.float32(query.shape[-1]))
  logits = jnp.einsum('btnh,bsnh->bnts', query, key, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)  # [batch, heads, q_len, k_len]
  probs = jax.nn.softmax(logits, axis=-1)
  dropped = apply_keep_mask(probs, keep, rate).astype(value.dtype)
  return jnp.einsum('bnts,bsnh->btnh', dropped, value)


def _slices(x: jax.Array, groups: int, axis: int) -> list[jax.Array]:
  size = x.shape[axis] // groups
  return [jax.lax.slice_in_dim(x, g * size, (g + 1) * size, axis=axis) for g in range(groups)]


def _join(parts: list[jax.Array], axis: int) -> jax.Array:
  """The inverse of `_slices`."""
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def _mask_slices(mask: jax.Array, groups: int) -> list[jax.Array]:
  """`mask` per head group: sliced when it has a heads axis, else shared."""
  if mask.ndim == 4 and mask.shape[1] > 1:
    return _slices(mask, groups, 1)
  return [mask] * groups


def _forward(query, key, value, mask, keep, rate, groups):
  """Context `[batch, q_len, heads, dim]` and the per-group probabilities `P` (float32)."""
  scale = 1.0 / jnp.sqrt(jnp.float32(query.shape[-1]))
  contexts, probs = [], []
  for q, k, v, m, kp in zip(_slices(query, groups, 2), _slices(key, groups, 2),
                            _slices(value, groups, 2), _mask_slices(mask, groups),
                            _slices(keep, groups, 1), strict=True):
    logits = jnp.einsum('btnh,bsnh->bnts', q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(logits, axis=-1)  # [batch, heads / groups, q_len, k_len]
    dropped = apply_keep_mask(p, kp, rate).astype(value.dtype)
    contexts.append(jnp.einsum('bnts,bsnh->btnh', dropped, v))
    probs.append(p)
  return _join(contexts, 2), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(query, key, value, mask, keep, rate, groups):
  return _forward(query, key, value, mask, keep, rate, groups)[0]


def _attention_fwd(query, key, value, mask, keep, rate, groups):
  context, probs = _forward(query, key, value, mask, keep, rate, groups)
  return context, (query, key, value, mask, keep, context, probs)


def _attention_bwd(rate, groups, residuals, d_context):
  query, key, value, mask, keep, context, probs = residuals
  scale = 1.0 / jnp.sqrt(jnp.float32(query.shape[-1]))
  # rowsum(dP * P) of the softmax backward, as rowsum(dO * O): [batch, heads, q_len, 1].
  row = jnp.sum(d_context.astype(jnp.float32) * context.astype(jnp.float32), axis=-1)
  row = jnp.transpose(row, (0, 2, 1))[..., None]
  d_query, d_key, d_value = [], [], []
  for q, k, v, m, kp, do, r, p in zip(
      _slices(query, groups, 2), _slices(key, groups, 2), _slices(value, groups, 2),
      _mask_slices(mask, groups), _slices(keep, groups, 1), _slices(d_context, groups, 2),
      _slices(row, groups, 1), probs, strict=True):
    d_dropped = jnp.einsum('btnh,bsnh->bnts', do, v, preferred_element_type=jnp.float32)
    d_logits = p * (apply_keep_mask(d_dropped, kp, rate) - r) * scale
    d_logits = jnp.where(m, d_logits, 0.0)  # masked logits are constants (fully masked rows)
    dropped = apply_keep_mask(p, kp, rate).astype(value.dtype)
    d_query.append(jnp.einsum('bnts,bsnh->btnh', d_logits.astype(key.dtype), k))
    d_key.append(jnp.einsum('bnts,btnh->bsnh', d_logits.astype(query.dtype), q))
    d_value.append(jnp.einsum('bnts,btnh->bsnh', dropped, do.astype(value.dtype)))
  return (_join(d_query, 2).astype(query.dtype), _join(d_key, 2).astype(key.dtype),
          _join(d_value, 2).astype(value.dtype), None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)
