"""An NNX BERT classifier written here from flax's NNX layers (post-LN blocks, exact GELU, pooler,
`classifier`), with its own module names, and the map from them to our Linen BERT's paths.

`from_linen(params, config)` builds it with the weights of our Linen `BertForSequenceClassification`
(`adapters_jax.models.load_pretrained`), so it computes what that model and transformers' PyTorch
BERT compute on the same checkpoint. Paths: `embed/{words,positions,types,norm}`,
`blocks/<i>/attn/{query,key,value,out}`, `blocks/<i>/attn_norm`, `blocks/<i>/mlp/{up,down}`,
`blocks/<i>/mlp_norm`, `pooler`, `head`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from adapters_jax.nnx.linen_bridge import map_path

# The twin's module paths -> our Linen BERT's (first match wins, so `attn/out` before `attn`).
NNX_TO_LINEN = {
    r'blocks/(\d+)/attn/out': r'encoder/layer_\1/attention/output',
    r'blocks/(\d+)/attn_norm': r'encoder/layer_\1/attention_layer_norm',
    r'blocks/(\d+)/attn': r'encoder/layer_\1/attention',
    r'blocks/(\d+)/mlp/up': r'encoder/layer_\1/ffn/intermediate',
    r'blocks/(\d+)/mlp/down': r'encoder/layer_\1/ffn/output',
    r'blocks/(\d+)/mlp_norm': r'encoder/layer_\1/ffn_layer_norm',
    'embed/words': 'embeddings/word_embeddings',
    'embed/positions': 'embeddings/position_embeddings',
    'embed/types': 'embeddings/token_type_embeddings',
    'embed/norm': 'embeddings/layer_norm',
    'pooler': 'pooler/dense',
    'head': 'classifier/dense',
}


class Embeddings(nnx.Module):

  def __init__(self, cfg, rngs):
    self.words = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
    self.positions = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs)
    self.types = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, rngs=rngs)
    self.norm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)

  def __call__(self, ids):  # [B, L] -> [B, L, H]
    positions = jnp.arange(ids.shape[1])[None]
    return self.norm(self.words(ids) + self.positions(positions) + self.types(jnp.zeros_like(ids)))


class Attention(nnx.Module):

  def __init__(self, cfg, rngs):
    h = cfg.hidden_size
    self.heads = cfg.num_heads
    self.query, self.key, self.value, self.out = (nnx.Linear(h, h, rngs=rngs) for _ in range(4))

  def __call__(self, x, mask):  # x [B, L, H], mask [B, L]
    b, length, width = x.shape
    d = width // self.heads
    q, k, v = (f(x).reshape(b, length, self.heads, d) for f in (self.query, self.key, self.value))
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(d)
    scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.finfo(scores.dtype).min)
    context = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, -1), v)
    return self.out(context.reshape(b, length, width))


class Mlp(nnx.Module):

  def __init__(self, cfg, rngs):
    self.up = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs)
    self.down = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x), approximate=False))


class Block(nnx.Module):

  def __init__(self, cfg, rngs):
    self.attn = Attention(cfg, rngs)
    self.attn_norm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.mlp = Mlp(cfg, rngs)
    self.mlp_norm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)

  def __call__(self, x, mask):
    x = self.attn_norm(x + self.attn(x, mask))
    return self.mlp_norm(x + self.mlp(x))


class BertClassifier(nnx.Module):
  """(ids [B, L], mask [B, L]) -> logits [B, num_labels]."""

  def __init__(self, cfg, num_labels: int, rngs: nnx.Rngs):
    self.embed = Embeddings(cfg, rngs)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.pooler = nnx.Linear(cfg.hidden_size, cfg.hidden_size, rngs=rngs)
    self.head = nnx.Linear(cfg.hidden_size, num_labels, rngs=rngs)

  def __call__(self, ids, mask):
    x = self.embed(ids)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(jnp.tanh(self.pooler(x[:, 0])))


def from_linen(linen_params, cfg, num_labels: int) -> BertClassifier:
  """The twin holding the weights of our Linen BERT classifier's `linen_params`."""
  model = BertClassifier(cfg, num_labels, nnx.Rngs(0))
  linen = traverse_util.flatten_dict(linen_params, sep='/')
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, variable in flat:
    source = linen[map_path('/'.join(map(str, path)), NNX_TO_LINEN)]
    assert source.shape == variable[...].shape, path
    variable[...] = jnp.asarray(source)
  nnx.update(model, nnx.from_flat_state(flat))
  return model
