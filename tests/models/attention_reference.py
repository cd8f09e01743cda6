"""A padded attention input and a float64 NumPy multi-head attention, the reference the attention
paths are checked against."""

import jax
import jax.numpy as jnp
import numpy as np


def padded_inputs():
  """Hidden states [3, 7, 32] and a padding mask [3, 1, 1, 7] (rows of 7, 5 and 2 tokens)."""
  hidden = jax.random.normal(jax.random.key(0), (3, 7, 32))
  valid = np.ones((3, 7), bool)
  valid[1, 5:] = False
  valid[2, 2:] = False
  return hidden, jnp.asarray(valid)[:, None, None, :]  # mask [batch, 1, 1, seq]


def numpy_attention(params, hidden, mask, keep, rate, heads):
  """float64 self-attention with `params`' query/key/value/output Dense layers.

  `keep` None = no dropout; else dropout keeps `keep` [batch, heads, q, k] and scales by 1/(1 - rate).
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(hidden, np.float64)
  batch, seq, width = x.shape
  dense = lambda name, v: v @ p[name]['kernel'] + p[name]['bias']
  split = lambda v: v.reshape(batch, seq, heads, width // heads)
  q, k, v = (split(dense(n, x)) for n in ('query', 'key', 'value'))
  logits = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(width // heads)
  logits = np.where(np.asarray(mask), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  if keep is not None:
    probs = np.where(np.asarray(keep), probs / (1 - rate), 0.0)
  context = np.einsum('bnts,bsnh->btnh', probs, v).reshape(batch, seq, width)
  return dense('output', context)
