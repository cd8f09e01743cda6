"""A tiny Linen transformer encoder for tests, written independently of the library's backbones.

Its module paths follow the same naming as the backbones (`encoder/layer_{i}/attention/query`, ...,
or `encoder/layers/...` with `scan=True`), so the presets' default sites match it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Attention(nn.Module):
  hidden: int
  heads: int

  @nn.compact
  def __call__(self, x, mask):  # x [B, L, H], mask [B, L]
    b, length, h = x.shape
    d = h // self.heads
    q = nn.Dense(h, name='query')(x).reshape(b, length, self.heads, d)
    k = nn.Dense(h, name='key')(x).reshape(b, length, self.heads, d)
    v = nn.Dense(h, name='value')(x).reshape(b, length, self.heads, d)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(d)
    scores = jnp.where(mask[:, None, None, :] > 0, scores, -1e9)
    ctx = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, -1), v).reshape(b, length, h)
    return nn.Dense(h, name='output')(ctx)


class FeedForward(nn.Module):
  hidden: int
  intermediate: int

  @nn.compact
  def __call__(self, x):
    h = nn.gelu(nn.Dense(self.intermediate, name='intermediate')(x), approximate=False)
    return nn.Dense(self.hidden, name='output')(h)


class Layer(nn.Module):
  hidden: int = 16
  heads: int = 2
  intermediate: int = 32
  dropout: float = 0.1
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask):
    drop = nn.Dropout(self.dropout, deterministic=self.deterministic)
    a = Attention(self.hidden, self.heads, name='attention')(x, mask)
    x = nn.LayerNorm(name='attention_layer_norm')(x + drop(a))
    f = FeedForward(self.hidden, self.intermediate, name='ffn')(x)
    return nn.LayerNorm(name='ffn_layer_norm')(x + drop(f))


class ScanLayer(Layer):
  @nn.compact
  def __call__(self, x, mask):
    return super().__call__(x, mask), None


class TinyClassifier(nn.Module):
  """Embeddings, `layers` post-LN blocks, a classifier on the first token. Output: logits [B, K]."""

  vocab: int = 64
  hidden: int = 16
  heads: int = 2
  intermediate: int = 32
  layers: int = 2
  num_labels: int = 2
  scan: bool = False

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True):
    x = nn.Embed(self.vocab, self.hidden, name='embeddings')(input_ids)
    kw = dict(hidden=self.hidden, heads=self.heads, intermediate=self.intermediate,
              deterministic=deterministic)
    if self.scan:
      stack = nn.scan(ScanLayer, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                      length=self.layers)
      x, _ = Encoder(stack, kw, name='encoder')(x, attention_mask)
    else:
      x = Encoder(None, kw, layers=self.layers, name='encoder')(x, attention_mask)
    return nn.Dense(self.num_labels, name='classifier')(nn.tanh(x[:, 0]))


class Encoder(nn.Module):
  scanned: type | None
  layer_kwargs: dict
  layers: int = 0

  @nn.compact
  def __call__(self, x, mask):
    if self.scanned is not None:
      return self.scanned(**self.layer_kwargs, name='layers')(x, mask)
    for i in range(self.layers):
      x = Layer(**self.layer_kwargs, name=f'layer_{i}')(x, mask)
    return x


def tiny_batch(batch: int = 3, length: int = 7, vocab: int = 64, seed: int = 0):
  """Token ids [B, L] and a padding mask [B, L] with different lengths per row."""
  rng = jax.random.key(seed)
  ids = jax.random.randint(rng, (batch, length), 1, vocab)
  lengths = jnp.arange(batch) % length + length - batch + 1
  mask = (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.int32)
  return ids * mask, mask


def init_tiny(model: TinyClassifier, seed: int = 0):
  ids, mask = tiny_batch(vocab=model.vocab)
  return model.init(jax.random.key(seed), ids, mask)['params']


def perturb_adapter(params, name: str, scale: float = 0.5, seed: int = 7):
  """Adds normal noise to adapter `name`'s leaves, so a zero-initialised adapter does something.

  (A constant shift would vanish in the LayerNorm that follows most sites.)
  """
  from flax import traverse_util

  from adapters_jax import adapter_leaves

  flat = traverse_util.flatten_dict(params, sep='/')
  key = jax.random.key(seed)
  for path, value in adapter_leaves(params, name).items():
    key, sub = jax.random.split(key)
    flat[path] = value + scale * jax.random.normal(sub, value.shape)
  return traverse_util.unflatten_dict(flat, sep='/')
