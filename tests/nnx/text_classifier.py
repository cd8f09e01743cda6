"""A tiny NNX text classifier built from flax's own NNX layers, as `experiments.train` builds an
`nnx:` model: `--config.model=nnx:tests.nnx.text_classifier:make_classifier`.

Pre-LayerNorm blocks of `nnx.MultiHeadAttention` (padding masked) and `hosts.Mlp`, dropout after
the embeddings, a masked mean pool and an `nnx.Linear` head named `classifier`. LoRA sites:
`SITES` (`layers/<i>/attn/query` and `.../value`).
"""

import jax.numpy as jnp
from flax import nnx

from tests.nnx.hosts import HEADS, WIDTH, Mlp

SITES = ((r'layers/\d+/attn/(query|value)', 'parallel'),)


class Block(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=HEADS, in_features=WIDTH, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.mlp = Mlp(WIDTH, rngs)

  def __call__(self, x, attention_mask):
    mask = nnx.make_attention_mask(attention_mask, attention_mask)  # [batch, 1, length, length]
    x = x + self.attn(self.norm1(x), mask=mask)
    return x + self.mlp(self.norm2(x))


class TextClassifier(nnx.Module):
  """(input_ids, attention_mask, token_type_ids) [batch, length] -> logits [batch, num_labels]."""

  def __init__(self, vocab_size: int, num_labels: int, rngs: nnx.Rngs, layers: int = 2,
               dropout: float = 0.1):
    self.embed = nnx.Embed(vocab_size, WIDTH, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.layers = nnx.List([Block(rngs) for _ in range(layers)])
    self.classifier = nnx.Linear(WIDTH, num_labels, rngs=rngs)

  def __call__(self, input_ids, attention_mask, token_type_ids):
    x = self.dropout(self.embed(input_ids))  # [batch, length, width]
    for layer in self.layers:
      x = layer(x, attention_mask)
    weights = attention_mask[..., None].astype(x.dtype)  # [batch, length, 1]
    pooled = (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
    return self.classifier(pooled)


def make_classifier(*, vocab_size: int, num_labels: int, rngs: nnx.Rngs,
                    layers: int = 2) -> TextClassifier:
  """The constructor `experiments.train` calls (`layers` through `--config.model_overrides`)."""
  return TextClassifier(vocab_size, num_labels, rngs, layers=layers)
